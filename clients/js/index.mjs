// ESM entry: the same objects as the CommonJS build (one copy of each class, so instanceof
// works whichever way a program and its libraries load the package).
import taskhub from './lib/index.cjs';

export const Client = taskhub.Client;
export const Subscription = taskhub.Subscription;
export const Watch = taskhub.Watch;
export const Task = taskhub.Task;
export const Handle = taskhub.Handle;
export const toSeconds = taskhub.toSeconds;
export const TaskHubError = taskhub.TaskHubError;
export const ProtocolError = taskhub.ProtocolError;
export const FrameTooLarge = taskhub.FrameTooLarge;
export const UnknownOperation = taskhub.UnknownOperation;
export const InvalidAction = taskhub.InvalidAction;
export const InvalidOption = taskhub.InvalidOption;
export const AuthenticationFailed = taskhub.AuthenticationFailed;
export const PermissionDenied = taskhub.PermissionDenied;
export const TooManyConnections = taskhub.TooManyConnections;
export const TaskNotFound = taskhub.TaskNotFound;
export const StaleAttempt = taskhub.StaleAttempt;
export const NotHolding = taskhub.NotHolding;
export const TaskFailed = taskhub.TaskFailed;
export const TaskTimeout = taskhub.TaskTimeout;
export const TaskCancelled = taskhub.TaskCancelled;
export const NoResult = taskhub.NoResult;
export const ConnectionClosed = taskhub.ConnectionClosed;
export const StoreUnavailable = taskhub.StoreUnavailable;
export const StoreFenced = taskhub.StoreFenced;
export const PartitionUnavailable = taskhub.PartitionUnavailable;
export const fromWire = taskhub.fromWire;
export default taskhub;
