"""Drives `fm serve` with the original FlowMason Python client (flowmason_core.kubernetes.FlowMasonK8sClient)
exactly as its users do. Usage: compat.py KUBECONFIG. Prints one JSON object with what it saw; raises on
anything unexpected."""

import json
import sys

from flowmason_core.kubernetes import FlowMasonK8sClient, StageSpec

kubeconfig = sys.argv[1]
client = FlowMasonK8sClient(kubeconfig_path=kubeconfig, namespace="default")
seen = {}

stages = [
    StageSpec(id="greet", component_type="json_transform",
              config={"data": {"greeting": "hello {{input.who}}"}}),
    StageSpec(id="wait", component_type="delay", depends_on=["greet"], config={"ms": 50}),
]
created = client.create_pipeline("py-pipeline", stages, timeout="5m", parallelism=True, retries=1,
                                  output_stage_id="greet", labels={"from": "python"})
seen["pipeline"] = created.metadata["name"]

run = client.create_run("py-run-1", "py-pipeline", inputs={"who": "Python"}, timeout="1m")
done = client.wait_for_run("py-run-1", timeout_seconds=120, poll_interval=0.1)
assert done.is_complete, done
seen["phase"] = done.status.phase.value
seen["output"] = done.status.output
seen["stages"] = [done.status.metrics.stagesCompleted, done.status.metrics.stagesTotal]

got = client.get_run("py-run-1")
seen["get_run"] = got.status.phase.value
seen["list_runs"] = sorted(r.metadata["name"] for r in client.list_runs())
seen["list_runs_of_pipeline"] = sorted(r.metadata["name"] for r in client.list_runs(pipeline_ref="py-pipeline"))

slow = [StageSpec(id="sleep", component_type="delay", config={"ms": 60000})]
client.create_pipeline("py-slow", slow, parallelism=False)
client.create_run("py-run-slow", "py-slow")
for _ in range(1200):
    r = client.get_run("py-run-slow")
    if r.status and r.status.phase and r.status.phase.value == "Running":
        break
    import time
    time.sleep(0.05)
client.cancel_run("py-run-slow")
cancelled = client.wait_for_run("py-run-slow", timeout_seconds=120, poll_interval=0.1)
seen["cancelled"] = cancelled.status.phase.value

# The client's string form of a provider's secretRef: a Secret's name.
llm = [StageSpec(id="draft", component_type="generator", config={"prompt": "hi"})]
client.create_pipeline("py-llm", llm, providers={"anthropic": {"model": "claude-x", "secretRef": "llm-secrets"}})
seen["llm_secret_ref"] = client.get_pipeline("py-llm").spec.providers.anthropic.secretRef is not None
client.delete_pipeline("py-llm")

client.delete_pipeline("py-pipeline")
seen["pipelines_after_delete"] = sorted(p.metadata["name"] for p in client.list_pipelines())
print(json.dumps(seen))
