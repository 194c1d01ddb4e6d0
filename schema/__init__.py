"""What the shell's file loaders share: the config (controller/) and scenario (replay/) readers
both validate with pydantic and report problems the same way. Imports only pydantic."""
