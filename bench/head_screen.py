"""A fast screen of image features for the one-to-one head (val only, never test).

    python bench/head_screen.py runs/flickr8k/feats.parquet [runs/flickr8k/feats-lite2.parquet ...] \
        [--img linear|mlp|gpo] [--seed 0]

Trains the vse head's recipe (linear image side on the global feature, MLP on the MiniLM
sentence vector, VSE++ hardest negatives, margin 0.2, batch 128, Adam 2e-4 x 0.1 after
epoch 8, 16 epochs) on the features given (several files: their global vectors
concatenated) and prints val rsum after every epoch. It is how issue 13's backbone lever
was screened before the product run (BENCHMARKS "Two backbones"): about 3.5 minutes a run
on 2 cores against 7 for `smcli train --variant vse`, whose val it reproduces within about
1 (312.0 here against 311.8). ``--img mlp`` adds an MLP branch to the image side and
``--img gpo`` pools the projected regions with VSE-infinity's generalized pooling.
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smcli.dataset import check_splits, load_matching_data
from smcli.evaluation.recall import recall_metrics
from smcli.models import minilm
from smcli.training.loss import ranking_loss_grid

p = argparse.ArgumentParser()
p.add_argument("feats", nargs="+")
p.add_argument("--captions", default="runs/flickr8k/captions.parquet")
p.add_argument("--img", default="linear")  # linear | mlp | gpo | gpo-mlp
p.add_argument("--txt", default="sent")  # sent | sent+words (a GPO over projected word states added)
p.add_argument("--epochs", type=int, default=16)
p.add_argument("--decay", type=int, default=8)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--emb", type=int, default=1024)
p.add_argument("--drop", type=float, default=0.2)
p.add_argument("--lr", type=float, default=2e-4)
a = p.parse_args()

torch.manual_seed(a.seed)
torch.set_num_threads(2)
datas = [load_matching_data(f, a.captions) for f in a.feats]
d0 = datas[0]
train_caps, val_caps = check_splits(d0)
glob = np.concatenate([d.global_ for d in datas], 1).astype(np.float32)
need_regions = a.img.startswith("gpo")
if need_regions:
    regs = np.concatenate([np.asarray(d.regions, dtype=np.float16) for d in datas], 2)
used = np.concatenate([train_caps, val_caps])
states = minilm.encode_cached([d0.captions[i] for i in used])
row = np.full(len(d0.captions), -1)
row[used] = np.arange(len(used))
sent = torch.from_numpy(states.sentence)
img_dim = glob.shape[1]


class GPO(nn.Module):
    """VSE-infinity's generalized pooling: per-dimension sorted features, learned weights by rank."""

    def __init__(self, d_pe=32, d_hidden=32):
        super().__init__()
        self.d_pe = d_pe
        self.gru = nn.GRU(d_pe, d_hidden, 1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def pe(self, n):
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d_pe, 2).float() * -(np.log(10000.0) / self.d_pe))
        pe = torch.zeros(n, self.d_pe)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return pe

    def forward(self, x):  # [B, K, D]
        B, K, D = x.shape
        pe = self.pe(K)[None].expand(B, K, self.d_pe)
        out, _ = self.gru(pe)
        h = (out[..., : out.shape[-1] // 2] + out[..., out.shape[-1] // 2:]) / 2
        w = torch.softmax(self.linear(h) / 0.1, 1)  # [B, K, 1]
        xs = x.sort(dim=1, descending=True).values
        return (xs * w).sum(1)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        E = a.emb
        self.drop = nn.Dropout(a.drop)
        self.img_lin = nn.Linear(img_dim, E)
        if "mlp" in a.img:
            self.img_mlp = nn.Sequential(nn.Linear(img_dim, E // 2), nn.BatchNorm1d(E // 2), nn.ReLU(),
                                         nn.Linear(E // 2, E))
        if a.img.startswith("gpo"):
            self.gpo = GPO()
        self.txt = nn.Sequential(nn.Linear(384, E), nn.ReLU(), nn.Dropout(a.drop), nn.Linear(E, E))
        if a.txt != "sent":
            self.word = nn.Linear(384, E)
            self.wgpo = GPO()

    def images(self, idx):
        if a.img.startswith("gpo"):
            r = torch.from_numpy(regs[idx].astype(np.float32))  # [B, R, D]
            r = self.drop(r)
            x = self.img_lin(r)
            if "mlp" in a.img:
                B, R, D = r.shape
                x = x + self.img_mlp(r.reshape(B * R, D)).reshape(B, R, -1)
            e = self.gpo(x)
        else:
            g = self.drop(torch.from_numpy(glob[idx]))
            e = self.img_lin(g)
            if "mlp" in a.img:
                e = e + self.img_mlp(g)
        return F.normalize(e, dim=-1)

    def texts(self, caps):
        r = row[caps]
        s = self.drop(sent[r])
        e = self.txt(s)
        if a.txt != "sent":
            pad, mask = states.padded(r)
            w = self.word(self.drop(torch.from_numpy(pad)))
            w = w.masked_fill(~torch.from_numpy(mask)[..., None], -1e4)
            e = e + self.wgpo(w) if a.txt == "sent+words" else self.wgpo(w)
        return F.normalize(e, dim=-1)


def rsum_val(model):
    model.eval()
    with torch.no_grad():
        vimgs = np.unique(d0.caption_image[val_caps])
        ie = torch.cat([model.images(vimgs[i:i + 256]) for i in range(0, len(vimgs), 256)])
        te = torch.cat([model.texts(val_caps[i:i + 1024]) for i in range(0, len(val_caps), 1024)])
        S = (ie @ te.T).numpy()
    pos = {im: k for k, im in enumerate(vimgs)}
    m = recall_metrics(S, np.array([pos[i] for i in d0.caption_image[val_caps]]))
    rs = [m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10]
    model.train()
    return m.rsum, rs


model = Head()
opt = torch.optim.Adam(model.parameters(), lr=a.lr)
best = (0, 0)
for ep in range(a.epochs):
    for g in opt.param_groups:
        g["lr"] = a.lr * (0.1 if ep >= a.decay else 1)
    order = torch.randperm(len(train_caps), generator=torch.Generator().manual_seed(a.seed * 100003 + ep)).numpy()
    t0 = time.time()
    tot = 0
    for s in range(len(order) // 128):
        idx = train_caps[order[s * 128:(s + 1) * 128]]
        ci = d0.caption_image[idx]
        ims, inv = np.unique(ci, return_inverse=True)
        ie = model.images(ims)
        te = model.texts(idx)
        S = (ie @ te.T)[torch.from_numpy(inv)]
        same = torch.from_numpy(ci[:, None] == ci[None, :])
        loss = ranking_loss_grid(S, same, 0.2, "hardest")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        tot += float(loss)
    r, rs = rsum_val(model)
    if r > best[0]:
        best = (r, ep + 1)
    recalls = " ".join(f"{x:.1f}" for x in rs)
    print(f"ep {ep+1} loss {tot/(s+1):.4f} val {r:.1f} {recalls} {time.time()-t0:.0f}s", flush=True)
print(f"BEST {best[0]:.1f} @ {best[1]} :: {vars(a)}")
