"""Runs one of the original FlowMason package's operators on an input, for the expectations of
tests/components.rs. Usage: original_operator.py MODULE CLASS < INPUT_JSON (e.g. flowmason_lab.operators.core.loop
LoopOperator). Prints one JSON object: {"output": ...} with the operator's output, or {"error": TYPE,
"message": ...} when it raised."""

import asyncio
import importlib
import json
import sys

module, name = sys.argv[1], sys.argv[2]
operator = getattr(importlib.import_module(module), name)
data = json.load(sys.stdin)
try:
    output = asyncio.run(operator().execute(operator.Input(**data), None))
    print(json.dumps({"output": output.model_dump(mode="json")}))
except Exception as e:  # noqa: BLE001 - the test compares whatever the original raised
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
