"""Steps: what one node runs and how its record is judged. Per workload its settings model, its metrics, the step
builder (the command, as executor templates) and the judge; plus what steps share (torchrun commands, statistics).
Imports only the base types of executors (dcforge/executors/base.py); never placement or a check."""
