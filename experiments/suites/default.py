"""BERT, GPT and T5 at matched parameter count, each trained for the same training FLOPs on the bundled corpus.

  python -m experiments.compare --workdir=runs/compare        (this suite is the default; `make demo`)

All three are the `tiny` preset (d_model 128, 4 heads, 4 blocks deep, d_ff 512, RoPE, pre-LayerNorm, GELU, tied
embeddings) on one tokenizer (vocabulary 8000, shared through config.data). T5 keeps the same depth, split evenly
2 + 2 as T5 itself does; its decoder's cross-attention is paid for by narrowing the MLP of all four blocks to d_ff
384, which matches GPT and BERT within 0.1% of their parameters (`--dry_run` prints the counts).

The budget, 4e13 training FLOPs each as the steps execute them (train/optim.py executed_flops_per_step), is the
smallest tried on the King James Bible at which every contender's fine-tuned probes beat chance on both tasks; a T5
step costs less (the decoder runs only over the target tokens) and so does a BERT step (its head runs at the masked
positions alone), so both take more steps than GPT. The batch is 8 rather than the tiny preset's 32: at these
budgets more, smaller steps train every contender better for the same FLOPs. Each contender trains at the peak
learning rate of lowest eval loss on its own objective in the grid of experiments/suites/learning_rate.py (chosen at
4e12 FLOPs), since one rate for all left BERT's MLM near a unigram model. After training, every contender scores the
probe pairs zero-shot and is fine-tuned on each probe task next to the same model from a random init
(experiments/probes.py): the report's probe columns.

The measurements behind each of these choices, the results at 4e13, 1.2e13 and 4e12 FLOPs, and how long the
comparison takes are in docs/results.md.
"""


def get_suite() -> dict:
    """The default suite (see the module docstring)."""
    return dict(
        description=(
            "BERT (MLM), GPT (causal LM) and T5 (span corruption) from the same `tiny` layers, at matched "
            "parameter count (T5: 2 encoder + 2 decoder blocks, d_ff 384 to pay for cross-attention), "
            "same corpus, tokenizer, batch, optimizer and schedule shape; each at its best peak learning rate of "
            "a five-point grid."
        ),
        contenders={
            # Each at the peak learning rate of lowest eval loss in experiments/suites/learning_rate.py, measured on
            # the modern corpus, FLOPs as executed (docs/results.md; on the King James Bible: 1e-3, 3e-3, 2e-3).
            "bert": dict(config="experiments/configs/bert.py:tiny", overrides={"train.learning_rate": 2e-3}),
            "gpt": dict(config="experiments/configs/gpt.py:tiny", overrides={"train.learning_rate": 2e-3}),
            "t5": dict(config="experiments/configs/t5.py:tiny",
                       overrides={"model.n_layers": 2, "model.n_decoder_layers": 2, "model.d_ff": 384,
                                  "train.learning_rate": 1e-3}),
        },
        # 4x the steps of the tiny preset's batch of 32 for the same FLOPs (see the module docstring);
        # --config.train.batch_size=... replaces it.
        overrides={"train.batch_size": 8},
        budget=("flops", 4e13),  # See the module docstring: the smallest tried where every probe beats chance.
        param_tolerance=0.05,
        evals=5,
        zero_shot=("next_sentence", "word_order"),  # No training: each model scores the probe pairs.
        blimp=90,  # BLiMP's fixed subset of 90 pairs per paradigm (6,030 pairs) scored zero-shot: experiments/blimp.py
        probes=("next_sentence", "word_order"),  # 12 fine-tuning runs (with the random-init baselines).
        # experiments/ladder.py: T5 at twice its rate. The ladder's rule check at 2.5e11 FLOPs (vocabulary 1024, batch
        # 16) found 2x the rule better at width 64 (4.747 against 4.825, seed noise 0.032) and equal at width 8;
        # on the suite itself T5's five grid rates lay within 0.1 nats (docs/results.md).
        ladder=dict(lr_scale={"t5": 2.0}),
    )
