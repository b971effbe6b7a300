"""The training loop every torchrun worker runs.

Exactness: everything that decides the next step is a function of what a checkpoint stores.
- weights (safetensors, fp32, bitwise) and the optimizers' states (optimizer.pt: AdamW's moments,
  Muon's momentum buffers);
- the step, from which each group's learning rate follows (schedule.lr_at of the group's own peak);
- the data position, one integer into the deterministic stream (data.TokenStream);
- randomness: the torch generator is re-seeded from (seed, step, rank) before every step, so dropout
  draws never depend on how many steps this process has run. Sampling uses its own generator.
- fp16: the GradScaler's scale and growth tracker (in trainer.json): a fresh scaler would start
  again at its initial scale and skip steps backing off from it.
The CPU kernels a step uses are deterministic for a given thread count (each thread owns its slice
of every output), so a run killed and resumed with the same processes and threads ends bitwise
equal to one that never stopped. torch.use_deterministic_algorithms is not needed for that, and its
embedding backward would cost ~7% of a GPT-2-vocabulary step.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from gptkit import faults
from gptkit.checkpoint import (
    load_checkpoint,
    model_from_state_dict,
    prune_checkpoints,
    save_checkpoint,
    step_dirname,
)
from gptkit.device import configure_matmul, resolve_precision
from gptkit.errors import GptkitError
from gptkit.model import GPT, PRESETS, GPTConfig
from gptkit.runs import CONFIG_FILE
from gptkit.train import data as datamod
from gptkit.train import hellaswag, mfu, restarts, signals
from gptkit.train import watchdog as wdmod
from gptkit.train.config import LAUNCHER_ENV, SHAPE_KEYS, ResolvedRun, model_settings, plan_batches, shape_of
from gptkit.train.dist import Dist, TrainingError, check_shared_run_dir, step_seed
from gptkit.train.loss import fuse_loss
from gptkit.train.metrics import Reporter, run_header, truncate_metrics
from gptkit.train.optim import (
    apply_config,
    build_optimizers,
    pack_optimizer_states,
    schedule_lrs,
    unpack_optimizer_states,
)
from gptkit.train.parallel import make_strategy
from gptkit.train.schedule import lr_at
from gptkit.train.validation import loss_sums

SCALER_STATE = "grad_scaler"  # trainer.json's key for GradScaler.state_dict(): floats and ints, JSON


def restore_scaler(scaler: torch.amp.GradScaler | None, trainer_state: dict, where: Path) -> None:
    """Load the saved scaler state into `scaler`. A checkpoint without one (an older gptkit, a run in
    another precision) leaves the scaler fresh; a run without a scaler ignores it."""
    saved = trainer_state.get(SCALER_STATE)
    if scaler is None or saved is None:
        return
    keys = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    if (
        not isinstance(saved, dict)
        or not keys <= set(saved)
        or not all(isinstance(saved[k], int | float) for k in keys)
    ):
        raise TrainingError(f"{where}: its {SCALER_STATE} state is not a GradScaler's; the checkpoint is corrupt")
    scaler.load_state_dict(saved)


class StepAbandoned(Exception):
    """A stop was asked for in the middle of a step of a one-process run: the step is dropped, the
    weights, optimizer and data position are still those after the last completed step."""

    def __init__(self, micro: int, of: int):
        super().__init__(f"micro-batch {micro} of {of}")
        self.micro, self.of = micro, of


class Trainer:
    def __init__(self, rr: ResolvedRun, dist: Dist, watchdog: wdmod.Watchdog | None = None):
        self.rr, self.dist = rr, dist
        self.watchdog = watchdog or wdmod.Watchdog(rr.run_dir, dist.rank, dist.world_size, limit=0, parent=None)
        cfg = self.cfg = rr.train
        self.run_dir = Path(rr.run_dir)
        self.device = dist.device
        configure_matmul(self.device)
        self.precision = resolve_precision(cfg.precision, self.device)

        plan = rr.plan
        if plan.world_size != dist.world_size and rr.launch.nodes > 1 and os.environ.get(LAUNCHER_ENV):
            # Every node's launcher planned nodes x its own process count: the rendezvous gathered
            # another total, so the nodes have different GPU counts. Every rank sees it, at once.
            here = os.environ.get("LOCAL_WORLD_SIZE", "?")
            raise GptkitError(
                f"the {rr.launch.nodes} nodes started different numbers of processes ({dist.world_size} in all; "
                f"{here} on this node, planned as {plan.world_size // rr.launch.nodes} on each): give every node "
                "the same --gpus (under SLURM: --gpus-per-node), or a GPU count all of them have"
            )
        if plan.world_size != dist.world_size:  # started by hand with another torchrun --nproc
            plan = plan_batches(cfg, dist.world_size, micro_batch_given=False)
        self.plan = plan

        # Data: the shards' own tokenizer (saved beside them, or the built-in their manifest names)
        # decides the model's vocabulary; it is saved into the run and every checkpoint.
        data_dir, val_paths, train_paths, manifest = datamod.check_data(rr.data_dir)
        self.tok = datamod.data_tokenizer(manifest, data_dir)
        self.tokenizer_name, vocab_size, self.eot = self.tok.name, self.tok.vocab_size, self.tok.eot_token
        self.data_notes: list[str] = list(manifest.get("notes", []))
        if dist.master:
            from gptkit.tokenizer import save_tokenizer
            from gptkit.vocab_files import SAVED_DIR

            save_tokenizer(self.tok, self.run_dir / SAVED_DIR)
        vocab = (self.tokenizer_name, vocab_size)  # every token id is checked as its shard is opened
        self.train_stream = datamod.TokenStream(train_paths, self.eot, cfg.seed, shuffle=True, vocab=vocab)
        self.val_stream = datamod.TokenStream(val_paths, self.eot, cfg.seed, shuffle=False, vocab=vocab)
        self.batches = datamod.TrainBatches(
            self.train_stream, cfg.seq_len, plan.micro_batch, dist.rank, dist.world_size
        )
        self.copier = datamod.BatchCopier(self.batches, self.device)  # pinned, non-blocking on CUDA

        # How the model is spread over the ranks (parallel.py): the loop below only calls the seam.
        # The launcher chose it (resolve.choose_parallel); a run config without the choice is DDP.
        self.parallel_choice = rr.extra.get("parallel") or {"strategy": "ddp", "checkpointing": False, "why": ""}
        self.parallel = make_strategy(
            self.parallel_choice["strategy"],
            dist,
            activation_checkpointing=bool(self.parallel_choice["checkpointing"]),
            precision=self.precision,
        )
        # Model: same initial weights on every rank (DDP would broadcast rank 0's anyway).
        torch.manual_seed(cfg.seed)
        init = None
        if cfg.init_from:
            # Fine-tuning or continuing an imported model: its architecture and weights (with this
            # run's dropout), a fresh optimizer and schedule. (resolve.prepare already checked the
            # vocabulary, and that the run's shape is the weights'.)
            # verify=False: the launcher checked its files before any rank started (resolve.read_init_from).
            # Sharded, rank 0 alone reads the weights and the strategy broadcasts them after wrap, as
            # a resume does (_load): one full copy in a node's RAM, not one per rank.
            reads = self.parallel.replicated or dist.master
            init = load_checkpoint(cfg.init_from, device=self.device, verify=False, weights=reads)
            self._check_tokenizer(init.meta, init.path)
            self.model_config = replace(init.config, dropout=cfg.dropout)
            if shape_of(self.model_config.to_dict()) != {k: getattr(cfg, k) for k in SHAPE_KEYS}:
                raise TrainingError(f"{init.path}: its model ({init.config}) is not this run's shape")
        else:
            # The run's shape (config.json, resolved by resolve.prepare); the vocabulary is the data's.
            self.model_config = GPTConfig(**model_settings(cfg)).with_vocab(vocab_size)
        if init is not None and self.parallel.replicated:
            self.model = model_from_state_dict(self.model_config, init.state_dict, self.device, init.path).train()
            init = None
        else:
            self.model = GPT(self.model_config).to(self.device)
        self.step, self.data_pos, self.tokens_seen = 0, 0, 0
        if self.device.type == "cpu":  # fp32 or bf16 (fp16 is refused on CPU)
            fuse_loss(self.model)  # see loss.py: the logits dominate a CPU step

        compile_ = self.compiled = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        # Training goes through train_model (compiled, wrapped); evaluation and sampling use self.model,
        # the plain module that shares the same parameters.
        self.train_model = self.parallel.wrap(self.model, compile=compile_)
        self.optimizers = build_optimizers(cfg, self.model, self.device, self.precision.name)
        # fp16 only on CUDA (the precision policy refuses it elsewhere): dynamic loss scaling. Made
        # before _load, which restores its state.
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.use_grad_scaler else None
        if init is not None:  # sharded --init-from: rank 0's weights into every rank's shards
            self.parallel.load(init, self.optimizers, None)
        if rr.resume_from:
            self._load(Path(rr.resume_from))

        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        self.mfu: mfu.MfuMeter | None = None
        if dist.master:
            self.mfu = mfu.meter_for_run(
                self.flops_per_token,
                self.device.type,
                self.precision.name,
                torch.backends.cuda.matmul.allow_tf32,
                world_size=dist.world_size,
                nodes=rr.launch.nodes,
            )
        self.stop_requested = False
        # One process: a stop request may end a step between micro-batches (a CPU step of a big
        # model takes minutes to hours). Several ranks agree on stopping in the step's all-reduce
        # instead: a rank leaving mid-step would leave the others waiting in a gradient all-reduce.
        self.stop_mid_step = dist.world_size == 1
        self.micro_sleep = faults.number("train.micro_sleep")
        self.last_saved = self.step if rr.resume_from else -1

    # --- checkpoints -----------------------------------------------------------------------------
    def _check_tokenizer(self, meta: dict, where: Path) -> None:
        """A checkpoint trained with another vocabulary than the data's is refused, never continued
        (tokenizer.same_vocabulary: the launcher's rule too)."""
        from gptkit.tokenizer import same_vocabulary, vocabulary_label

        recorded = meta.get("tokenizer_info") or meta.get("tokenizer")
        if not same_vocabulary(recorded, self.tok):
            raise TrainingError(
                f"{where}: its tokenizer ({vocabulary_label(recorded)}) is not the one the data was made with "
                f"({vocabulary_label(self.tok.info())})"
            )

    def _load(self, path: Path) -> None:
        """Every rank: the weights, the optimizers' states and the position, through the seam."""
        # verify=False: the launcher verified the checkpoint once, before any rank started
        # (resolve.resolve_run_dir); every rank hashing it again would only repeat that read.
        # Replicated, every rank reads the files; sharded, rank 0 alone and the strategy broadcasts
        # (one full copy in RAM, not one per rank: 6 GB for gpt2-xl's weights and moments).
        reads = self.parallel.replicated or self.dist.master
        ck = load_checkpoint(path, device=self.device, verify=False, weights=reads)
        self._check_tokenizer(ck.meta, ck.path)
        if ck.config != self.model_config:
            raise TrainingError(f"{ck.path}: its model ({ck.config}) differs from this run's ({self.model_config})")
        ts = ck.trainer_state()
        if ts is None or "data_pos" not in ts:
            raise TrainingError(f"{ck.path}: no trainer state; it cannot be resumed (use it with `gptkit sample`)")
        opt_state = ck.optimizer_state(device=self.device) if reads else None
        try:
            states = None if opt_state is None else unpack_optimizer_states(opt_state, len(self.optimizers))
        except ValueError as e:
            raise TrainingError(f"{ck.path}: {e}") from None
        if not reads and ck.has_optimizer_state():
            states = [{} for _ in self.optimizers]  # received from rank 0
        self.parallel.load(ck, self.optimizers, states)
        if states is not None:
            # The config may have changed betas, eps, decay, learning rates; it wins.
            apply_config(self.optimizers, self.cfg, self.precision.name)
        restore_scaler(self.scaler, ts, ck.path)
        self.step, self.data_pos, self.tokens_seen = int(ts["step"]), int(ts["data_pos"]), int(ts.get("tokens", 0))

    def save(self) -> None:
        if self.last_saved == self.step:
            return
        self.last_saved = self.step
        self.watchdog.phase("checkpoint save")  # every rank: the others wait for rank 0 in the next step
        # A collective every rank joins (a sharded strategy gathers here), though only rank 0 writes.
        model_state, opt_states = self.parallel.state(self.optimizers)
        replicas = self._check_replicas()
        if not self.dist.master:
            return
        with self.dist.alone():  # a full disk here is rank 0's: the others are told (train/main.py)
            self._write_checkpoint(model_state, opt_states, replicas)

    def _write_checkpoint(self, model_state, opt_states, replicas: int) -> None:
        state: dict[str, object] = {
            "step": self.step,
            "data_pos": self.data_pos,
            "tokens": self.tokens_seen,
            "seed": self.cfg.seed,
            "world_size": self.dist.world_size,
            "grad_accum": self.plan.grad_accum,
            "time": time.time(),
        }
        if replicas:
            state["replicas_equal"] = replicas  # every rank's weights were checked equal at this step
        if self.scaler is not None:
            state[SCALER_STATE] = self.scaler.state_dict()  # after this step's update: the next step's scale
        save_checkpoint(
            self.run_dir / step_dirname(self.step),
            model_state,
            config=self.model_config,
            tokenizer=self.tok,
            train_config=self.cfg.to_dict(),
            optimizer_state=pack_optimizer_states(opt_states),
            trainer_state=state,
        )
        prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)

    def _check_replicas(self) -> int:
        """Replicated ranks must hold the same weights (the optimizers run on each; a nondeterministic
        step, Muon's iteration say, would let them drift apart silently). Every rank compares its
        fingerprint with the mean of all: one small all-reduce per checkpoint. Returns the ranks
        checked (0: nothing to check)."""
        if not (self.dist.distributed and self.parallel.replicated):
            return 0
        local = weights_fingerprint(self.model)
        total = self.dist.all_reduce(local.clone())
        differs = self.dist.all_reduce((total != local * self.dist.world_size).any().long().reshape(1))
        if differs.item():
            raise TrainingError(
                f"step {self.step}: the ranks' weights differ; the replicas diverged (a bug: report it)"
            )
        return self.dist.world_size

    # --- evaluation ------------------------------------------------------------------------------
    def val_loss(self) -> float:
        """Every rank its share of the fixed validation rows, summed across ranks (validation.py's
        loop, the one `gptkit eval` runs)."""
        self.model.eval()
        rows = datamod.val_rows(
            self.val_stream,
            self.cfg.seq_len,
            self.cfg.eval_tokens,
            self.dist.rank,
            self.dist.world_size,
            self.plan.micro_batch,
        )
        total = loss_sums(self.model, rows, self.device, self.precision.autocast)
        self.model.train()
        self.dist.all_reduce(total)
        return float(total[0] / total[1])

    def sample_prompt(self) -> tuple[str | None, str | None]:
        """(the prompt samples start from, a note): the configured prompt if the tokenizer can encode
        it, else a newline (nanoGPT's start for character vocabularies), else no samples."""
        prompt, reason = self.cfg.sample_prompt, "it is empty and there is no end-of-text token"
        for candidate in (prompt, "\n"):
            if not candidate and self.tok.eot_token is None:
                continue  # an empty prompt starts from the end-of-text token, which this vocabulary lacks
            try:
                self.tok.encode(candidate)
            except GptkitError as e:
                reason = str(e)
                continue
            if candidate == prompt:
                return prompt, None
            return candidate, f"samples start from a newline: the sample prompt cannot be encoded ({reason})"
        return None, f"no samples: neither the sample prompt nor a newline can be encoded with {self.tok.name}"

    def sample(self, prompt: str) -> str:
        from gptkit.generate import SampleConfig, sample_text

        was = self.model.training
        self.model.eval()
        # Sharded weights: every rank decodes, and all must make the same number of forward passes
        # (each all-gathers): none stops at end-of-text, and the text is cut there afterwards.
        lockstep = not self.parallel.replicated
        sc = SampleConfig(
            max_new_tokens=self.cfg.sample_tokens,
            temperature=self.cfg.sample_temperature,
            top_k=50,
            seed=self.cfg.seed,
            stop_at_eot=not lockstep,
        )
        s = sample_text(self.model, self.tok, prompt, sc, autocast=self.precision.autocast()).samples[0]
        text = s.text
        if lockstep and self.eot in s.tokens:
            text = self.tok.decode(s.tokens[: s.tokens.index(self.eot)])
        self.model.train(was)
        return prompt + text

    # --- one optimizer step ----------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, dict[str, float]]:
        """One optimizer step over the global batch. Returns (loss, grad norm, each role's lr)."""
        cfg, plan = self.cfg, self.plan
        step = self.step
        # Each group's own peak (AdamW's --lr, Muon's --muon-lr) scaled by the one schedule.
        lrs = schedule_lrs(
            self.optimizers,
            lambda peak: lr_at(
                step,
                lr=peak,
                max_steps=cfg.max_steps,
                warmup_steps=cfg.warmup_steps,
                min_lr_ratio=cfg.min_lr_ratio,
                schedule=cfg.schedule,
                decay_frac=cfg.decay_frac,
            ),
        )
        lr = lrs["decay"]
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        W, rank = self.dist.world_size, self.dist.rank
        for micro in range(plan.grad_accum):
            self.stop_here(micro)
            # Randomness (dropout) seeded per block of the global batch, not per rank: block
            # micro * W + rank holds the same rows whatever the process count (TrainBatches.get), so
            # a run resumed on another count draws the same masks for the same rows.
            torch.manual_seed(step_seed(cfg.seed, step, micro * W + rank))
            x, y = self.copier.get(self.data_pos, micro)
            last = micro == plan.grad_accum - 1
            # Gradients are reduced once per step: only the last micro-step syncs.
            with self.parallel.accumulating(last):
                with self.precision.autocast():
                    _, loss = self.train_model(x, y)
                self.stop_here(micro)
                loss = loss / plan.grad_accum
                loss_sum += loss.detach()
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            if self.micro_sleep:
                time.sleep(self.micro_sleep)
        if self.scaler:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        # --grad-clip 0: no clipping (nanoGPT's meaning); the norm is still measured for the log
        grad_norm = self.parallel.clip_grad_norm_(cfg.grad_clip)
        # One small all-reduce: the mean loss for the log, and whether any rank was asked to stop.
        stop_here = signals.requested()
        stats = torch.stack([loss_sum.float(), torch.tensor(float(stop_here), device=self.device)])
        self.dist.all_reduce(stats)
        loss_val, stop = stats[0].item() / self.dist.world_size, stats[1].item() > 0
        gnorm = grad_norm.item()
        if not math.isfinite(loss_val) or (self.scaler is None and not math.isfinite(gnorm)):
            what = f"loss {loss_val}" if not math.isfinite(loss_val) else f"gradient norm {gnorm}"
            saved = (
                f"the last good checkpoint is {self.run_dir / step_dirname(self.last_saved)}; "
                "lower --lr or raise --warmup-steps and resume with --resume auto"
                if self.last_saved > 0
                else "no checkpoint was saved yet; lower --lr or raise --warmup-steps and start again"
            )
            raise TrainingError(
                f"{what} at step {self.step + 1} (lr {lr:.3g}); training stopped without saving; {saved}"
            )
        for opt in self.optimizers:
            if self.scaler:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler:
            self.scaler.update()
        self.stop_requested = self.stop_requested or stop
        self.step += 1
        self.data_pos += plan.rows * cfg.seq_len
        self.tokens_seen += plan.rows * cfg.seq_len
        return loss_val, gnorm, lrs

    def stop_here(self, micro: int) -> None:
        """Drop this step (StepAbandoned) if a stop was asked for and this run may stop mid-step. Only
        before the optimizer step: what was done of the step so far is gradients, thrown away here."""
        if self.stop_mid_step and signals.requested():
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            raise StepAbandoned(micro + 1, self.plan.grad_accum)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg, d = self.cfg, self.dist
        # Resumed: drop what was logged after the checkpoint. A fresh start (step 0): drop everything
        # a failed attempt in this folder logged, which the plot would join to this run's line.
        if d.master:
            truncate_metrics(self.run_dir, self.step)
        rep = Reporter(
            self.run_dir,
            enabled=d.master,
            max_steps=cfg.max_steps,
            start_step=self.step,
            log_every=cfg.log_every,
            tensorboard=cfg.tensorboard,
            wandb=cfg.wandb,
            config=self.rr.to_dict(),
        )
        examples, tokenizer = self._hellaswag_setup(rep)
        prompt, prompt_note = self.sample_prompt() if cfg.sample_tokens else (None, None)
        if d.master:
            for note in [*self.data_notes, *([prompt_note] if prompt_note else [])]:
                rep.print(note)
            for line in run_header(
                str(self.run_dir),
                f"{shape_label(self.model.config, cfg.preset)} {self.model.num_params() / 1e6:.1f}M params",
                f"tokenizer {self.tok.name} ({self.tok.vocab_size} tokens)",
                f"{d.world_size} x {self.device.type} | {self.precision.name}",
                f"batch {cfg.batch_tokens} tokens = {d.world_size} procs x {self.plan.micro_batch} x "
                f"{cfg.seq_len} x {self.plan.grad_accum} accum",
                f"resumed at step {self.step}" if self.rr.resume_from else None,
            ):
                rep.print(line)
            if d.distributed or self.parallel_choice.get("why"):
                rep.print(f"parallel: {self.parallel_label()}")
        if self.rr.extra.get("restart"):
            info = self.rr.extra["restart"]
            rep.print(restarts.restart_line(info))
            rep.record(
                self.step,
                restart=info["n"],
                cause=info.get("cause"),
                failed_at=info["failed_at"],
                resumed_from=info["resumed_from"],
            )
        shares = getattr(self.parallel, "local_fraction", None)
        if shares is not None:  # sharded: each rank's share of the matrices, for the log and the tests
            lo, hi = shares()
            rep.record(self.step, parallel=self.parallel.name, shard_min=lo, shard_max=hi)
        dt_avg = None
        start = self.step
        try:
            while True:
                done = self.step >= cfg.max_steps
                if cfg.eval_tokens and (self.step % cfg.eval_every == 0 or done):
                    self.watchdog.phase("evaluation")
                    with self.out_of_memory("evaluation"):
                        val = self.val_loss()
                    rep.event(self.step, val_loss=val)
                if examples and (self.step % cfg.hellaswag_every == 0 or done):
                    self.watchdog.phase("hellaswag")
                    with self.out_of_memory("hellaswag"):
                        r = hellaswag.evaluate(
                            self.model,
                            examples,
                            tokenizer,
                            device=self.device,
                            autocast=self.precision.autocast,
                            rank=d.rank,
                            world_size=d.world_size,
                        )
                    rep.event(
                        self.step,
                        hellaswag=r["acc_norm_token"],
                        hellaswag_norm_char=r["acc_norm_char"],
                        hellaswag_acc=r["acc"],
                        hellaswag_n=r["n"],
                        hellaswag_truncated=r["truncated"],
                    )
                if prompt is not None and self.step > 0 and (self.step % cfg.sample_every == 0 or done):
                    self.watchdog.phase("sample")  # every rank: the others wait for rank 0
                    if d.master or not self.parallel.replicated:  # sharded weights: every rank decodes
                        with d.alone() if self.parallel.replicated else contextlib.nullcontext():
                            with self.out_of_memory("sample"):
                                text = self.sample(prompt)
                            rep.event(self.step, sample=text)
                if done:
                    break
                if self.compiled and self.step == start:
                    self.watchdog.phase("compile")
                t0 = time.perf_counter()
                try:
                    with self.out_of_memory("train"):
                        loss, gnorm, lrs = self.train_step()
                except StepAbandoned as e:
                    # Exactness: the checkpoint is the last completed step; a resume redoes this one
                    # from its start (each step seeds its own randomness: train_step).
                    if self.step > 0:
                        self.save()
                    kept = (
                        f"checkpoint of step {self.step} saved; continue with --resume auto (it redoes step {self.step + 1})"
                        if self.step > 0
                        else "no step had completed, nothing to save; --resume auto starts the run again"
                    )
                    rep.print(f"stopped during step {self.step + 1} (at {e}); {kept}")
                    return
                dt = time.perf_counter() - t0
                self.watchdog.beat(self.step, dt)
                _hook_after_step(self.step, d.rank)
                dt_avg = dt if dt_avg is None else 0.9 * dt_avg + 0.1 * dt
                tok_s = self.plan.rows * cfg.seq_len / dt
                rep.train_step(
                    self.step,
                    loss=loss,
                    lr=lrs["decay"],
                    muon_lr=lrs.get("matrix", lrs.get("qkv")),
                    grad_norm=gnorm,
                    tokens=self.tokens_seen,
                    tok_per_s=tok_s,
                    mfu=self.mfu.reading(tok_s) if self.mfu else None,
                    dt=dt,
                    eta_s=dt_avg * (cfg.max_steps - self.step),
                )
                for note in self.mfu.take_notes() if self.mfu else []:
                    rep.event(self.step, mfu_note=note)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps or self.stop_requested:
                    self.save()
                if self.stop_requested:
                    rep.print(f"stopped at step {self.step}; checkpoint saved; continue with --resume auto")
                    break
            self.save()
            if self.device.type == "cuda":  # only reachable on a GPU: the peak the plan is checked against
                rep.event(self.step, peak_memory=torch.cuda.max_memory_allocated(self.device))
        finally:
            rep.close()

    @contextlib.contextmanager
    def out_of_memory(self, phase: str) -> Iterator[None]:
        """CUDA out of memory in `phase` (train, evaluation, hellaswag, sample) as one line saying what
        to change; one rank's alone (peers stop for it: train/failures.py). The fault point
        train.oom=PHASE raises it on any device, as a micro-batch too large for the GPU would."""
        try:
            if faults.value("train.oom") == phase:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fault point train.oom={phase})")
            yield
        except torch.cuda.OutOfMemoryError:  # only CUDA raises it (and the fault point)
            raise TrainingError(self.out_of_memory_line(phase), collective=False) from None

    def out_of_memory_line(self, phase: str) -> str:
        # The micro-batch decides the activation memory of a step (and the rows of an evaluation
        # batch); what the caching allocator keeps from the step is what evaluation and sampling
        # then run beside. Accumulation keeps the global batch, so halving it changes only speed.
        mb, cfg = self.plan.micro_batch, self.cfg
        smaller = (
            f"try --micro-batch {mb // 2} (gradient accumulation keeps the global batch at {cfg.batch_tokens} tokens)"
            if mb > 1
            else f"--micro-batch is 1 already: try a smaller --preset or --seq-len than {cfg.seq_len}"
        )
        where = {
            "train": "",
            "evaluation": " in evaluation (its batches have --micro-batch rows too)",
            "hellaswag": " in HellaSwag (beside what the training steps keep)",
            "sample": f" while sampling {cfg.sample_tokens} tokens (beside what the training steps keep)",
        }[phase]
        off = {"hellaswag": "; or turn it off with --hellaswag-every 0", "sample": "; or --sample-tokens 0"}
        return f"CUDA out of memory{where} at --micro-batch {mb}; {smaller}{off.get(phase, '')}"

    def parallel_label(self) -> str:
        c = self.parallel_choice
        ac = " with activation checkpointing" if c["checkpointing"] else ""
        return f"{self.parallel.name}{ac}" + (f" ({c['why']})" if c.get("why") else "")

    def _hellaswag_setup(self, rep: Reporter):
        cfg = self.cfg
        if not cfg.hellaswag_every:
            return None, None
        files = hellaswag.find_hellaswag()
        if not files:
            rep.print("HellaSwag: no data (run `gptkit download hellaswag`); skipping that evaluation")
            return None, None
        examples = hellaswag.load_examples(files, cfg.hellaswag_limit)
        problem = hellaswag.unencodable(examples, self.tok)
        if problem:  # e.g. a character vocabulary without some of HellaSwag's characters
            rep.print(f"HellaSwag: skipped, {problem}")
            return None, None
        return examples, self.tok


def _hook_after_step(step: int, rank: int) -> None:
    """Fault points (gptkit.faults): train.step_sleep slows every step, so a test can kill a
    run mid-way; train.stall_rank stops one rank for good, as a hang would; train.kill_rank dies
    at one step of the first attempt, as a lost process would (the restart does not)."""
    delay = faults.number("train.step_sleep")
    if delay:
        time.sleep(delay)
    stall = faults.value("train.stall_rank")
    if stall not in (None, "") and int(stall) == rank and step >= faults.number("train.stall_step", 3):
        while True:
            time.sleep(3600)
    kill = faults.value("train.kill_rank")
    if kill not in (None, "") and int(kill) == rank and step == faults.number("train.kill_step", 3):
        if restarts.restart_count() == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def run(run_dir: str | Path) -> None:
    """Entry point of one worker: read RUN/config.json, train, clean up."""
    rr = ResolvedRun.read(Path(run_dir) / CONFIG_FILE)
    device_type = rr.extra.get("device_type", "cpu")
    limit = getattr(rr.launch, "watchdog", None)
    watchdog = wdmod.Watchdog(
        run_dir,
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        limit=limit,
        parent=os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None,
    ).start()
    timeout = getattr(rr.launch, "collective_timeout", None) or (wdmod.pg_timeout(limit) if limit != 0 else None)
    dist = Dist(device_type, timeout_s=timeout)
    try:
        if restarts.restart_count() and dist.master:  # torchrun restarted us: the newest checkpoint
            rr = restarts.plan_restart(rr, restarts.restart_count())
        if dist.distributed:  # every rank trains with rank 0's view of the config
            rr = ResolvedRun.from_dict(dist.broadcast_object(rr.to_dict()))
        if rr.launch.nodes > 1:
            check_shared_run_dir(dist, Path(run_dir), rr.launch.nodes)
        again = rr.extra.get("restart", {}).get("again")
        if again:
            raise TrainingError(again)
        Trainer(rr, dist, watchdog).fit()
        # Everyone waits for rank 0's last checkpoint before tearing the process group down: a rank
        # that destroys its gloo group while a peer is still busy can abort at exit (SIGABRT).
        # Only on success: after a failure the peers may be gone and a barrier would hang.
        dist.barrier()
    except BaseException:
        # The group stays open until this process exits: closing it would end a peer's pending
        # all-reduce (gloo) or leave it waiting (NCCL) before the peer has read this rank's error,
        # which train/main.py writes next and waits for the others to see.
        watchdog.stop()
        raise
    watchdog.stop()
    dist.close()


def weights_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Per parameter, the sum of its values' bit patterns (as integers, modulo a prime so that a sum
    over many ranks fits in int64): any one value that differs changes it, and random drift between
    replicas would have to cancel exactly to hide."""
    sums = []
    for p in model.parameters():
        bits = (
            p.detach().contiguous().view(torch.int32) if p.element_size() == 4 else p.detach().float().view(torch.int32)
        )
        sums.append(bits.sum(dtype=torch.int64) % 2_147_483_647)
    return torch.stack(sums)


def shape_label(mc: GPTConfig, preset: str) -> str:
    """The preset's name when the model has its shape, else the shape itself (--n-layer ... given)."""
    p = PRESETS.get(preset)
    if p is not None and (p.n_layer, p.n_head, p.n_embd) == (mc.n_layer, mc.n_head, mc.n_embd):
        return preset
    return f"{mc.shape} (layers x heads x width)"
