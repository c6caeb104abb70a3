#!/usr/bin/env bash
# Rebuilds the shipped reward model "positivity-minilm" and its data, from the repository root (see README.md
# here). About 8 minutes on 2 CPU cores for the sampling, 1 minute for the training.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=reward_models/data

# 1. Sample 8 completions of each of the 320 shipped openings from the embedded SmolLM2-135M-Instruct (plain
#    sampling, temperature 1, 32 new tokens, seed 0) and label every two completions of one prompt with the gold,
#    VADER positivity of the completion, keeping the pairs whose gold scores differ by more than 0.8.
#    One torch thread: the samples then do not depend on the core count.
OMP_NUM_THREADS=1 textgym reward synth --prompts openings --num-completions 8 --max-new-tokens 32 \
    --temperature 1.0 --seed 0 --gold vader --min-gap 0.8 \
    --save-completions $DATA/openings_smollm2_completions.jsonl --out $DATA/positivity_pairs.jsonl

# 2. Train a head on the frozen MiniLM encoder with the Bradley–Terry loss, 10% of the prompts held out. The head
#    sees the completion only, as the gold does. The shipped head keeps its 20th epoch: it was trained before
#    early stopping became the default.
textgym reward train --data $DATA/positivity_pairs.jsonl --out $DATA/positivity-minilm \
    --backbone minilm --no-use-prompt --epochs 20 --device cpu --seed 0 --no-early-stopping
