-- The batch scripts' arguments (apply.lua, remove_ended.lua): their ARGV. staged.lua, loaded
-- instead, gives apply.lua a staged piece of a big batch.
local ARGS = ARGV
