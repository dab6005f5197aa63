"""Runs FlowMason's own LLM nodes (flowmason_lab.nodes.core) without a network: each case's input goes
through the node's Input model and execute(), with a context whose `llm.generate_async` records what
the node asks and answers with the case's canned text. Usage: nodes.py < cases.json, where cases.json
is a list of {"node": "improver", "input": {...}, "answer": "..."}. Prints a JSON list, one
{"calls": [{"prompt", "system_prompt", "temperature", "max_tokens"}], "output": {...}} per case."""

import asyncio
import importlib
import json
import sys

CLASSES = {
    "improver": "ImproverNode",
    "selector": "SelectorNode",
    "rewriter": "RewriterNode",
    "translator": "TranslatorNode",
    "analyzer": "AnalyzerNode",
    "combiner": "CombinerNode",
}


class Answer:
    def __init__(self, content):
        self.content = content


class Llm:
    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    async def generate_async(self, prompt, system_prompt=None, temperature=0.7, max_tokens=4096, **kwargs):
        self.calls.append({"prompt": prompt, "system_prompt": system_prompt,
                           "temperature": temperature, "max_tokens": max_tokens})
        return Answer(self.answer)


class Context:
    def __init__(self, llm):
        self.llm = llm


async def run(case):
    module = importlib.import_module("flowmason_lab.nodes.core." + case["node"])
    node = getattr(module, CLASSES[case["node"]])()
    llm = Llm(case["answer"])
    output = await node.execute(node.Input(**case["input"]), Context(llm))
    return {"calls": llm.calls, "output": output.model_dump()}


async def main():
    cases = json.load(sys.stdin)
    results = [await run(case) for case in cases]
    print(json.dumps(results))


asyncio.run(main())
