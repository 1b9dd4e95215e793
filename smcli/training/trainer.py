"""The training loop: train on the train split, choose the epoch on val, never touch test.

Each step takes a batch of training captions with their images. The one-to-one embedding
head is trained with VSE++'s in-batch ranking loss; the many-to-many matcher is trained on
the positive pairs and, per positive, the ``mine`` hardest negative captions and images as
ranked by the (cheap) embedding (as ALBEF mines for its matching head: scoring every pair
of a batch with the matcher costs B^2 pairs), or on the whole batch with ``mine=0``.

The loop is three named steps, repeated until the epochs run out or val stops improving:
:meth:`Trainer.train_one_epoch`, :meth:`Trainer.validate` (R@1/5/10 both ways on val, and
with ``--global-weight val`` the cosine's weight), :meth:`Trainer.choose_and_save` (keep
the epoch if val improved, log it, checkpoint).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcli.dataset import MatchingData, check_splits
from smcli.errors import UsageError
from smcli.evaluation.recall import RecallMetrics, recall_metrics
from smcli.inference.gallery import read_rows
from smcli.inference.scoring import (
    as_tensor,
    encode_images,
    encode_texts,
    exhaustive_scores,
    two_stage_scores,
)
from smcli.models.config import ModelConfig
from smcli.models.factory import CONFIG_FILE, INCOMPLETE_FILE, ModelInfo, create_model, save_model, write_config
from smcli.models.text_inputs import make_text_store
from smcli.report import say
from smcli.runtime import autocast, resolve_device, resolve_precision
from smcli.training.checkpoint import STATE_FILE, load_state, read_progress, resume_settings, save_state
from smcli.training.distributed import SINGLE, World, connected_zero, join_world
from smcli.training.fusion import choose_global_weight
from smcli.training.loss import mine_negatives, ranking_loss_grid, ranking_loss_mined
from smcli.training.options import TrainOptions

METRICS_FILE = "metrics.jsonl"


def prepare_output(out_dir: Path, opts: TrainOptions) -> None:
    """Refuse to clobber a model directory unless asked to."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a directory")
    if opts.resume:
        return
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not opts.overwrite:
            what = "an unfinished run (use --resume)" if (out_dir / STATE_FILE).exists() else "files"
            raise UsageError(f"-o {out_dir}: directory already holds {what}; use --overwrite to replace it")
        for name in (STATE_FILE, METRICS_FILE, "config.json", "model.safetensors", "vocab.txt", INCOMPLETE_FILE):
            (out_dir / name).unlink(missing_ok=True)


def feature_signature(meta: dict[str, Any]) -> dict[str, Any]:
    from smcli.images.features import feature_signature as sig

    return sig(meta)


@dataclass
class EpochStats:
    """What one epoch of training did."""

    loss: float  # mean over steps
    match_loss: float  # the matcher's part of it
    pairs: int  # pairs scored
    seconds: float


@dataclass
class Validation:
    """One validation: the model's val metrics, the cosine weight chosen with them (with
    ``--global-weight val``), and the one-to-one head's own metrics (the shortlist's quality)."""

    metrics: RecallMetrics
    embedding: RecallMetrics
    chosen_weight: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, data: MatchingData, out_dir: Path, cfg: ModelConfig, opts: TrainOptions,
                 log: Callable[[str], None] | None = None, world: World = SINGLE):
        self.data, self.out_dir, self.opts, self.world = data, Path(out_dir), opts, world
        self.log = (log or (lambda msg: say("train", msg))) if world.is_main else (lambda msg: None)
        self.device = world.device(resolve_device(opts.device))
        self.precision = resolve_precision(opts.precision, self.device)
        self.train_caps, self.val_caps = check_splits(data)
        changes = {"img_dim": int(data.global_.shape[-1]), "vocab_size": len(data.vocab)}
        if cfg.word_vectors is not None:
            from smcli.models.glove import DIM

            changes["word_dim"] = DIM
        self.cfg = cfg.replace(**changes)
        self.info = ModelInfo(self.cfg, feature_signature(data.features_meta), data.vocab.hash,
                              {"training": {**asdict(opts), "train_captions": len(self.train_caps),
                                            "val_captions": len(self.val_caps),
                                            "captions_file": data.captions_name}})

    # -- data ---------------------------------------------------------------------------
    def _text_store(self):
        """Inputs for train and val captions only (test captions are never encoded here)."""
        used = np.concatenate([self.train_caps, self.val_caps])
        self.log(f"preparing {self.cfg.text_encoder} inputs for {len(used):,} captions")
        with self.world.main_first():  # process 0 fills the MiniLM cache, the others read it
            store = make_text_store(self.cfg, [self.data.captions[i] for i in used], self.data.vocab,
                                    [self.data.token_ids[i] for i in used])
        # map global caption index -> store row
        self.store_row = np.full(len(self.data.captions), -1, dtype=np.int64)
        self.store_row[used] = np.arange(len(used))
        return store

    def _images(self, index: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The images' grids (sorted rows: from a memory map, one read each) and global vectors."""
        regions = self.data.regions
        r = None if regions is None else as_tensor(read_rows(regions, index), self.device)
        return r, as_tensor(self.data.global_[index], self.device)

    def _encode_batch(self, model, store, images: np.ndarray, idx: np.ndarray):
        """Both sides of a batch: its images and its captions. With several processes each
        encodes its part of them and the parts are gathered, gradients and all, so every
        process holds the sides one process would have encoded."""
        world = self.world
        max_len = store.max_len(self.store_row[idx])  # the whole batch's padding, in every process
        img = model.encode_images(*self._images(images[world.part(len(images))]))
        txt = model.encode_texts(store.batch(self.store_row[idx[world.part(len(idx))]], device=self.device,
                                             max_len=max_len))
        return world.gather((img, len(images)), (txt, len(idx)))

    # -- step 2: validate ----------------------------------------------------------------
    @torch.inference_mode()
    def validate(self, model, store, caps: np.ndarray | None = None, shortlist: int | None = None) -> Validation:
        """R@1/5/10 both ways on ``caps`` (val), re-ranking ``shortlist`` candidates (0:
        exhaustive). With ``--global-weight val`` the matcher is scored alone, and the weight
        of the cosine that fuses best is set in the model and returned with the metrics."""
        caps = self.val_caps if caps is None else caps
        shortlist = self.opts.val_shortlist if shortlist is None else shortlist
        model.eval()
        images = np.unique(self.data.caption_image[caps])
        img_pos = np.full(len(self.data.image_ids), -1)
        img_pos[images] = np.arange(len(images))
        cap_img = img_pos[self.data.caption_image[caps]]
        with autocast(self.device, self.precision):
            regions = None if self.data.regions is None else self.data.regions[images]
            img = encode_images(model, regions, self.data.global_[images], device=self.device)
            txt = encode_texts(model, store, self.store_row[caps], device=self.device)
            # the one-to-one head on its own: how good the shortlist is
            cosine = model.embedding_grid(img, txt).float().cpu().numpy()
            embedding = recall_metrics(cosine, cap_img)
            on_val = self.cfg.global_weight_on_val
            if on_val:  # score by the matcher alone, then set the cosine's weight that fuses best
                with torch.no_grad():
                    model.global_weight.zero_()
            if shortlist:
                two = two_stage_scores(model, img, txt, shortlist)
                i2t, t2i = two.i2t, two.t2i
            else:
                i2t, t2i = exhaustive_scores(model, img, txt), None
            if not on_val:
                return Validation(recall_metrics(i2t, cap_img, t2i), embedding)
            weight, metrics = choose_global_weight(i2t, cosine, cap_img, t2i)
            with torch.no_grad():
                model.global_weight.fill_(weight)
            return Validation(metrics, embedding, {"global_weight": weight})

    # -- CCA: closed form ---------------------------------------------------------------
    def fit_cca(self) -> dict[str, Any]:
        from smcli.training.cca_fit import fit_cca_grid

        store = self._text_store()
        metrics, model, cfg = fit_cca_grid(self.cfg, self.data, store, self.store_row, self.train_caps,
                                           lambda m: self.validate(m, store, shortlist=0).metrics, self.log)
        self.cfg = cfg
        self.info.config = cfg
        self.info.extra["best"] = {"epoch": 0, **metrics.to_dict()}
        save_model(self.out_dir, model, self.info, self.data.vocab)
        self._append_metrics({"epoch": 0, "loss": None, **_prefixed(metrics), "cca_reg": cfg.cca_reg,
                              "cca_power": cfg.cca_power})
        return self.info.extra["best"]

    # -- the loop -----------------------------------------------------------------------
    def build_model(self):
        """A fresh model of the config: word vectors copied in, the --init head loaded (and
        frozen with --freeze-embedding)."""
        model = create_model(self.cfg).to(self.device)
        if self.cfg.text_encoder == "bilstm" and self.cfg.word_vectors:
            from smcli.models.glove import glove_matrix

            vecs, hits = glove_matrix(self.data.vocab.tokens)
            with torch.no_grad():
                known = torch.from_numpy(vecs.any(1))
                model.text_encoder.embed.weight[known] = torch.from_numpy(vecs[known.numpy()]).to(self.device)
            self.log(f"GloVe vectors for {hits:,} of {len(vecs):,} words")
        if self.opts.init_from:
            self._warm_start(model, self.opts.init_from)
        if self.opts.freeze_embedding:
            for module in (model.embedding, model.text_encoder):
                module.requires_grad_(False)
        return model

    def steps_per_epoch(self) -> int:
        steps = math.ceil(len(self.train_caps) / self.opts.batch_size)
        return min(steps, self.opts.max_steps_per_epoch) if self.opts.max_steps_per_epoch else steps

    def run(self) -> dict[str, Any]:
        """Train (or fit CCA); the model directory carries an INCOMPLETE marker until the run
        ends, so a model left by a killed run is never taken for a finished one."""
        if self.cfg.variant == "cca" and self.world.size > 1:
            raise UsageError("--variant cca is fitted in closed form in one process: run it without torchrun")
        marker = self.out_dir / INCOMPLETE_FILE
        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text("smcli train is running here or was interrupted: the model is the best epoch so far; "
                              f"smcli train --resume -o {self.out_dir} continues it\n")
        best = self.fit_cca() if self.cfg.variant == "cca" else self._train()
        if self.world.is_main:
            marker.unlink(missing_ok=True)
        return best

    def _train(self) -> dict[str, Any]:
        opts, world = self.opts, self.world
        torch.manual_seed(opts.seed)
        store = self._text_store()
        model = self.build_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                      weight_decay=opts.weight_decay)
        progress = {"epoch": 0, "step": 0, "best_rsum": -1.0, "best_epoch": 0, "bad_epochs": 0,
                    "config": self.cfg.to_dict(), "options": asdict(opts)}
        if opts.resume:
            saved = load_state(self.out_dir, model, optimizer) if world.is_main else None
            if world.size > 1:  # process 0's state on every process (no shared file system needed)
                saved = world.broadcast_object(saved)
                world.broadcast_module(model)
                optimizer.load_state_dict(world.broadcast_object(optimizer.state_dict()))
            if saved is None:
                self.log("no saved state to resume from; starting afresh")
            else:
                progress = saved
                progress["options"] = {**progress["options"], "epochs": opts.epochs}
                self.log(f"resuming at epoch {progress['epoch'] + 1}, step {progress['step']}")
        self.log(f"{self.cfg.variant} ({self.cfg.text_encoder}) on {self.device} ({self.precision}): "
                 f"{len(self.train_caps):,} train / {len(self.val_caps):,} val captions, "
                 f"{self.steps_per_epoch()} steps an epoch"
                 + (f", {world.size} processes" if world.size > 1 else ""))
        while progress["epoch"] < opts.epochs and progress["bad_epochs"] < opts.patience:
            epoch = progress["epoch"]
            lr = opts.lr * (0.1 if opts.lr_decay_epochs and epoch >= opts.lr_decay_epochs else 1.0)
            stats = self.train_one_epoch(model, optimizer, store, progress, lr)
            if world.is_main:  # process 0 evaluates, chooses the cosine weight and the epoch, saves
                started = time.time()
                val = self.validate(model, store)
                self.choose_and_save(model, optimizer, progress, stats, val, lr, time.time() - started)
            progress = world.broadcast_object(progress)  # ... and tells the others what it decided
            world.broadcast_module(model)
        if progress["bad_epochs"] >= opts.patience:
            self.log(f"stopped early: no better val rsum for {opts.patience} epochs")
        if opts.resume and world.is_main:
            self._record_epochs(opts.epochs)
        self.log(f"best val rsum {progress['best_rsum']:.1f} at epoch {progress['best_epoch']}; "
                 f"model in {self.out_dir}")
        return world.broadcast_object(json.loads((self.out_dir / "config.json").read_text())["best"]
                                      if world.is_main else None)

    def _record_epochs(self, epochs: int) -> None:
        """config.json names the epochs the run was trained to (a resume with --epochs may
        have raised them after the chosen epoch was saved)."""
        path = self.out_dir / CONFIG_FILE
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        if saved.get("training", {}).get("epochs") != epochs:
            saved["training"]["epochs"] = epochs
            write_config(self.out_dir, saved)

    # -- step 1: train one epoch ----------------------------------------------------------
    def train_one_epoch(self, model, optimizer, store, progress: dict[str, Any], lr: float) -> EpochStats:
        """The steps of epoch ``progress["epoch"]`` from ``progress["step"]`` on (a resumed
        epoch continues where its checkpoint left it), checkpointing every
        ``checkpoint_every`` steps."""
        opts = self.opts
        epoch = progress["epoch"]
        for group in optimizer.param_groups:
            group["lr"] = lr
        n_train, steps = len(self.train_caps), self.steps_per_epoch()
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(opts.seed * 100003 + epoch))
        started = time.time()
        loss_sum = progress.get("loss_sum", 0.0)
        match_sum = progress.get("match_loss_sum", 0.0)
        pairs = progress.get("pairs", 0)
        model.train()
        if opts.freeze_embedding:  # no dropout in the fixed head: it mines and scores
            model.embedding.eval()
            model.text_encoder.eval()
        with _StepProgress(f"epoch {epoch + 1}", steps, progress["step"], self.world.is_main) as bar:
            for step in range(progress["step"], steps):
                idx = self.train_caps[order[step * opts.batch_size:(step + 1) * opts.batch_size].numpy()]
                self.world.test_hook(epoch, step)
                self.world.dropout_seed(opts.seed, epoch, step)
                loss, match_loss, n_pairs = self._step(model, optimizer, store, idx)
                loss_sum += loss
                match_sum += match_loss
                pairs += n_pairs
                bar.update(loss_sum / (step + 1), pairs / max(1e-9, time.time() - started))
                if (step + 1) % opts.checkpoint_every == 0 and step + 1 < steps and self.world.is_main:
                    save_state(self.out_dir, model, optimizer,
                               {**progress, "step": step + 1, "loss_sum": loss_sum,
                                "match_loss_sum": match_sum, "pairs": pairs})
        return EpochStats(loss_sum / steps, match_sum / steps, pairs, time.time() - started)

    # -- step 3: choose and save ----------------------------------------------------------
    def choose_and_save(self, model, optimizer, progress: dict[str, Any], stats: EpochStats,
                        val: Validation, lr: float, val_seconds: float) -> bool:
        """Keep the epoch's model if val improved (the model directory then holds it), log
        the epoch's row, and checkpoint the end of the epoch. Returns whether it improved."""
        epoch = progress["epoch"]
        metrics = val.metrics
        row = {"epoch": epoch + 1, "loss": stats.loss, "match_loss": stats.match_loss,
               **_prefixed(metrics), **val.chosen_weight,
               "val_embedding_rsum": round(val.embedding.rsum, 2),
               "lr": lr, "train_seconds": round(stats.seconds, 1),
               "pairs_per_second": round(stats.pairs / max(stats.seconds, 1e-9), 1),
               "eval_seconds": round(val_seconds, 1)}
        improved = metrics.rsum > progress["best_rsum"]
        if improved:
            progress.update(best_rsum=metrics.rsum, best_epoch=epoch + 1, bad_epochs=0)
            self.info.extra["best"] = {"epoch": epoch + 1, **metrics.to_dict(), **val.chosen_weight}
            save_model(self.out_dir, model, self.info, self.data.vocab)
        else:
            progress["bad_epochs"] += 1
        self._append_metrics(row)
        weight = val.chosen_weight.get("global_weight")
        self.log(f"epoch {epoch + 1}: loss {row['loss']:.4f} (matcher {row['match_loss']:.4f}), "
                 f"val {metrics.short()}"
                 + (f" at global weight {weight:g}" if weight is not None else "")
                 + f" (embedding alone {val.embedding.rsum:.1f})"
                 f"{' (best)' if improved else ''}, {row['train_seconds']:.0f}s train "
                 f"+ {row['eval_seconds']:.0f}s val, {row['pairs_per_second']:.0f} pairs/s")
        progress.update(epoch=epoch + 1, step=0, loss_sum=0.0, match_loss_sum=0.0, pairs=0)
        save_state(self.out_dir, model, optimizer, progress)
        return improved

    def _step(self, model, optimizer, store, idx: np.ndarray) -> tuple[float, float, int]:
        """One optimisation step; returns (loss, the matcher's part of it, pairs scored).

        With several processes the batch is the same, its loss terms are split: each process
        adds those of its own positives (``rows``), ranked against the whole batch."""
        opts, world = self.opts, self.world
        if world.naive_loss:  # test-only negative control: rank within this process's slice only
            idx = idx[slice(*world.bounds(len(idx)))]
        cap_img = self.data.caption_image[idx]
        images, inverse = np.unique(cap_img, return_inverse=True)
        inv = torch.from_numpy(inverse).to(self.device)
        same = torch.from_numpy(cap_img[:, None] == cap_img[None, :]).to(self.device)  # [B, B]
        rows = world.rows(len(idx), self.device)
        with autocast(self.device, self.precision):
            img, txt = self._encode_batch(model, store, images, idx)
            emb = model.embedding_grid(img, txt)[inv]  # [B, B] float32; rows: image of pair i
            if opts.freeze_embedding:
                loss = torch.zeros((), device=emb.device)
            else:
                loss = opts.emb_weight * ranking_loss_grid(emb, same, opts.margin, opts.negatives, rows)
            n_pairs, m2m = 0, torch.zeros(())
            if self.cfg.many_to_many:
                m2m, n_pairs = self._matcher_loss(model, img, txt, inv, same, emb.detach(), rows)
                loss = loss + m2m
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world.sum_gradients(model)
        if opts.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        total, match, n_pairs = world.sum_values(float(loss.detach()), float(m2m.detach()), n_pairs)
        return total, match, int(n_pairs) or len(idx) * len(idx)

    def _warm_start(self, model, directory: str) -> None:
        """Copy the one-to-one head (and the text encoder) of a trained model into ``model``."""
        from smcli.images.features import check_signature
        from smcli.models.factory import load_model
        from smcli.models.pretrained import resolve_model

        source = load_model(resolve_model(directory), self.device)
        if source.config.text_encoder != self.cfg.text_encoder:
            raise UsageError(f"--init {directory}: its text encoder is {source.config.text_encoder}, "
                             f"not {self.cfg.text_encoder}")
        check_signature(source.info.features, self.data.features_meta, f"--init {directory}")
        if self.cfg.text_encoder == "bilstm" and source.info.vocab_hash != self.data.vocab.hash:
            raise UsageError(f"--init {directory}: trained with another vocabulary")
        own = model.state_dict()
        copied = {k: v for k, v in source.model.state_dict().items()
                  if k.startswith(("embedding.", "text_encoder.")) and k in own and own[k].shape == v.shape}
        if not any(k.startswith("embedding.") for k in copied):
            raise UsageError(f"--init {directory}: no one-to-one embedding head of the same size "
                             f"(emb_dim {source.config.emb_dim} vs {self.cfg.emb_dim})")
        model.load_state_dict(copied, strict=False)
        self.log(f"embedding head{' and text encoder' if self.cfg.text_encoder == 'bilstm' else ''} "
                 f"from {directory} ({source.config.variant}, val rsum "
                 f"{source.info.extra.get('best', {}).get('rsum', float('nan')):.1f})")

    def _matcher_loss(self, model, img, txt, inv, same, emb, rows: torch.Tensor | None = None):
        """The matcher's loss on the batch's positives (``rows``: only those, of the whole
        batch, with their negatives mined from the whole batch); returns (loss, pairs scored)."""
        opts = self.opts
        B = len(inv)
        if rows is not None and not len(rows):  # a batch smaller than the processes: none here
            return connected_zero(img, txt), 0
        if opts.mine == 0 or opts.mine >= B - 1:
            if rows is None:
                ii = inv.repeat_interleave(B)
                cc = torch.arange(B, device=inv.device).repeat(B)
                grid = model.score_pairs(img, txt, ii, cc).reshape(B, B).float()
                return ranking_loss_grid(grid, same, opts.margin, opts.negatives), B * B
            # the rows' terms read their row and their column of the grid: score only those
            needed = torch.zeros(B, B, dtype=torch.bool, device=inv.device)
            needed[rows] = needed[:, rows] = True
            flat = needed.reshape(-1).nonzero().squeeze(1)
            scores = model.score_pairs(img, txt, inv[flat // B], flat % B).float()
            grid = torch.zeros(B * B, device=scores.device).index_put((flat,), scores).reshape(B, B)
            return ranking_loss_grid(grid, same, opts.margin, opts.negatives, rows), len(flat)
        k = opts.mine
        neg_c, neg_i, valid_c, valid_i = mine_negatives(emb, same, k)
        ar = torch.arange(B, device=inv.device)
        if rows is not None:  # this process's positives; their negatives come from the whole batch
            neg_c, neg_i, valid_c, valid_i, ar = neg_c[rows], neg_i[rows], valid_c[rows], valid_i[rows], rows
        b = len(ar)
        ii = torch.cat([inv[ar], inv[ar].repeat_interleave(k), inv[neg_i.reshape(-1)]])
        cc = torch.cat([ar, neg_c.reshape(-1), ar.repeat_interleave(k)])
        s = model.score_pairs(img, txt, ii, cc).float()
        pos, s_c, s_i = s[:b], s[b:b + b * k].reshape(b, k), s[b + b * k:].reshape(b, k)
        loss = ranking_loss_mined(pos, s_c, s_i, opts.margin, opts.negatives, valid_c, valid_i,
                                  of=None if rows is None else B)
        return loss, len(s)

    def _append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.out_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def _prefixed(m: RecallMetrics) -> dict[str, float]:
    return {f"val_{k}": v for k, v in m.to_dict().items() if k not in ("images", "captions")}


class _StepProgress:
    """A rich progress line on a terminal (loss, pairs/s, ETA); silent in pipes."""

    def __init__(self, label: str, total: int, done: int, shown: bool = True):
        self.enabled = shown and sys.stderr.isatty()
        self.label, self.total, self.done = label, total, done

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.done, info="")
        return self

    def update(self, loss: float, pairs_per_s: float) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, info=f"loss {loss:.4f}  {pairs_per_s:,.0f} pairs/s")

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def train(regions: str, captions: str, out_dir: str | Path, cfg: ModelConfig,
          opts: TrainOptions) -> dict[str, Any]:
    """Train a matcher from a regions file and a captions file into ``out_dir``; under
    torchrun (or Slurm) in as many processes as it started (:mod:`smcli.training.distributed`)."""
    out = Path(out_dir)
    world = join_world(resolve_device(opts.device))  # one process unless torchrun or Slurm started several
    try:
        with world.quiet():
            return _train_in(world, regions, captions, out, cfg, opts)
    finally:
        world.leave()


def _resume_point(out: Path) -> tuple[ModelConfig, TrainOptions, int] | None:
    """A saved run's settings and the epochs it has finished (None: nothing to resume)."""
    settings = resume_settings(out)
    return None if settings is None else (*settings, read_progress(out)["epoch"])


def _train_in(world: World, regions: str, captions: str, out: Path, cfg: ModelConfig,
              opts: TrainOptions) -> dict[str, Any]:
    from smcli.dataset import load_matching_data

    if world.is_main:
        prepare_output(out, opts)
    saved = world.broadcast_object(_resume_point(out) if opts.resume and world.is_main else None)
    if saved is not None:
        # a resumed run continues with the settings it started with
        cfg, saved_opts, done = saved
        epochs = opts.resume_epochs or saved_opts.epochs  # --epochs on a resume: train on to this many
        if opts.resume_epochs and opts.resume_epochs <= done:
            raise UsageError(f"--epochs {opts.resume_epochs} with --resume: {out} has trained {done} "
                             "epoch(s) already; give more to train on")
        opts = replace(saved_opts, device=opts.device, epochs=epochs, resume_epochs=0)
        if world.is_main:
            say("train", f"resuming a {cfg.variant} ({cfg.text_encoder}) run with its saved settings"
                + (f", up to {epochs} epochs (started with {saved_opts.epochs})"
                   if epochs != saved_opts.epochs else ""))
    mapped = cfg.many_to_many and world.size > 1  # P processes, one copy of the grids a machine
    data = load_matching_data(regions, captions, with_regions=cfg.many_to_many and not mapped)
    if not mapped:
        return Trainer(data, out, cfg, opts, world=world).run()
    from smcli.training.region_cache import mapped_regions

    with mapped_regions(regions, data.image_ids, world) as grids:
        data.regions = grids
        return Trainer(data, out, cfg, opts, world=world).run()
