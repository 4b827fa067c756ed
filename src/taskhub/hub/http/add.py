"""``POST /add``, seed 000's batch form: chains of tasks, every step checked before any chain
starts, so a bad workload is refused whole."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from taskhub.errors import InvalidAction, PermissionDenied, ProtocolError
from taskhub.hub import writes
from taskhub.hub.http.deps import ACTION_SCHEMA, Caller, HubDep, error_responses
from taskhub.hub.http.tasks import header_trace
from taskhub.lifecycle.chains import MAX_STEPS
from taskhub.names import allowed, reserved_action, validate_action

# The action alphabet as a regular expression, for a route that refuses a bad name as a shape
# error (400): POST /add, whose workload is refused whole.
ACTION_PATTERN = str(ACTION_SCHEMA["pattern"])


class AddStep(BaseModel):
    """One step of a seed-000 chain."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(
        description="The step's action, `<noun>:<verb>`.",
        max_length=255,
        pattern=ACTION_PATTERN,
    )
    input: Any = Field(
        None,
        description="The declared input; the previous step's output (an object) is merged "
        "over it (null: the previous output as it is).",
    )


class AddChain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[AddStep] = Field(min_length=1, max_length=MAX_STEPS)


def _add_shape(value: Any) -> str:
    return "chains" if isinstance(value, list) else "chain"


# One chain, or a list of them: the tag names the branch, so an error names the bad step as
# `chain.tasks.1.task` or `chains.2.tasks.0.input` (and not both branches of a plain union).
AddWorkload = Annotated[
    Annotated[AddChain, Tag("chain")] | Annotated[list[AddChain], Tag("chains")],
    Discriminator(_add_shape),
]


class AddAccepted(BaseModel):
    accepted: int = Field(description="Tasks accepted: the steps of every chain.")
    chains: list[str] = Field(description="Each chain's id (a task: GET /v1/tasks/{id}).")


router = APIRouter()


@router.post(
    "/add",
    status_code=201,
    response_model=AddAccepted,
    tags=["tasks"],
    summary="Start chains of tasks (seed 000's batch form)",
    responses=error_responses(
        _400="A malformed workload (the bad step is named); nothing is started.",
        _403="No pub permission for a step's action (the step is named); nothing is started.",
    ),
)
async def add(
    body: Annotated[AddWorkload, Body()],
    hub: HubDep,
    creds: Caller,
    traceparent: Annotated[str | None, Header(description="W3C trace context")] = None,
    tracestate: Annotated[str | None, Header(description="W3C trace context")] = None,
) -> Any:
    """One `{tasks: [{task, input}, ...]}` chain or a list of them. The steps of a chain run
    one after another; each step's input is its declared input with the previous step's
    output merged over it. Every step of every chain is checked before any chain starts, so a
    bad workload is refused whole. Answers once the chains are stored. The request's
    `traceparent`/`tracestate` headers become every step's trace context."""
    chains = body if isinstance(body, list) else [body]
    for c, chain in enumerate(chains):
        for i, step in enumerate(chain.tasks):
            where = f"chains.{c}.tasks.{i}" if isinstance(body, list) else f"chain.tasks.{i}"
            try:
                validate_action(step.task)
            except InvalidAction as exc:  # the schema's pattern says as much: a shape error
                raise ProtocolError(f"{where}.task: {exc.message}", field=where) from None
            if reserved_action(step.task) or not allowed(creds.pub_permissions, step.task):
                raise PermissionDenied(
                    f"{where}: {creds.name!r} may not publish {step.task!r}", action=step.task
                )
    trace = header_trace(traceparent, tracestate) or None
    steps = [[{"action": s.task, "payload": s.input} for s in chain.tasks] for chain in chains]
    # A chain whose first step another hub leads starts (and is held) there, over the link.
    ids = await writes.add_chains(hub, creds, steps, merge_input=True, trace=trace)
    return {"accepted": sum(len(chain.tasks) for chain in chains), "chains": ids}
