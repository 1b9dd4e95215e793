#!/usr/bin/env bash
# CUDA check, for a GPU machine: train / score / retrieve --eval on CUDA with the bilstm text
# encoder (no MiniLM model needed), CPU vs CUDA scores, and exhaustive scoring speed at
# Flickr8k test size (1,000 x 5,000 pairs).
# Needs the example pipeline outputs (make demo writes demo-out/feats.parquet and
# demo-out/captions.parquet; FEATS_DIR=DIR for another folder); MiniLM is not needed.
# Usage: bash bench/cuda_check.sh   (figures go to stdout; OUT=DIR keeps the score files)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
D=${FEATS_DIR:-demo-out}; M=/tmp/smcli-cuda-model; export OUT=${OUT:-/tmp/smcli-cuda-out}; mkdir -p $OUT
python3 -m smcli train --regions $D/feats.parquet --captions $D/captions.parquet -o $M --text-encoder bilstm \
  --device cuda --epochs 4 --batch-size 16 --lr 1e-3 --inst-dim 64 --att-dim 32 --hidden-dim 64 --emb-dim 64 \
  --local-skip --fuse-global 2>&1 | tail -6
python3 -m smcli score --model $M --regions $D/feats.parquet --captions $D/captions.parquet --device cuda -o $OUT/cuda.parquet 2>&1 | tail -2
python3 -m smcli score --model $M --regions $D/feats.parquet --captions $D/captions.parquet --device cpu --precision fp32 -o $OUT/cpu.parquet 2>&1 | tail -2
python3 -m smcli score --model $M --regions $D/feats.parquet --captions $D/captions.parquet --device cuda --precision fp32 -o $OUT/cuda32.parquet 2>&1 | tail -1
python3 - <<'PY'
import pyarrow.parquet as pq, numpy as np, os
o=os.environ["OUT"]
a=pq.read_table(f"{o}/cpu.parquet").column("score").to_numpy()
b=pq.read_table(f"{o}/cuda32.parquet").column("score").to_numpy()
c=pq.read_table(f"{o}/cuda.parquet").column("score").to_numpy()
print("cpu fp32 vs cuda fp32 max diff", np.abs(a-b).max(), " vs cuda bf16 max diff", np.abs(a-c).max(),
      "rank corr", np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(c)))[0,1])
PY
python3 -m smcli retrieve --eval --split test --exhaustive --model $M --regions $D/feats.parquet --captions $D/captions.parquet --device cuda 2>&1 | tail -8
python3 - <<'PY'
# exhaustive scoring speed at Flickr8k test size (1,000 x 5,000) with the benchmark dims
import time, torch
from smcli.models import ModelConfig, create_model
from smcli.inference.scoring import exhaustive_scores
from smcli.runtime import autocast
cfg = ModelConfig(variant="smlstm", text_encoder="minilm", inst_dim=256, sim_dim=256, att_dim=128, hidden_dim=256,
                  local_skip=True, fuse_global=True)
m = create_model(cfg).cuda().eval()
r = torch.rand(1000, 49, 1280, device="cuda"); g = r.mean(1)
L = 16; mask = torch.ones(5000, L, dtype=torch.bool, device="cuda")
b = {"states": torch.randn(5000, L, 384, device="cuda"), "mask": mask, "sentence": torch.randn(5000, 384, device="cuda")}
with torch.inference_mode(), autocast("cuda", "bf16"):
    I = m.encode_images(r, g); T = m.encode_texts(b)
    for chunk in (4096, 65536):
        exhaustive_scores(m, I.select(torch.arange(50, device="cuda")), T, pairs_per_chunk=chunk)
        torch.cuda.synchronize(); t = time.time()
        s = exhaustive_scores(m, I, T, pairs_per_chunk=chunk)
        torch.cuda.synchronize(); dt = time.time() - t
        print(f"GPU exhaustive 5,000,000 pairs, chunk {chunk}: {dt:.1f} s, {5e6/dt:,.0f} pairs/s, "
              f"peak GPU mem {torch.cuda.max_memory_allocated()/2**30:.1f} GiB")
PY
