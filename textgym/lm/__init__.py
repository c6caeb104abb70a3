"""Shared LM infrastructure: loading models and tokenizers, prompts, the KV-cached incremental LM, distributed
plumbing.

The bottom layer of textgym: it imports no environment, reward model or agent, so all of them can use it.
"""
