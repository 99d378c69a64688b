"""BERT, GPT and T5 at matched parameter count, each trained for the same training FLOPs on the bundled corpus.

  python -m experiments.compare --workdir=runs/compare        (this suite is the default; `make demo`)

All three are the `tiny` preset (d_model 128, 4 heads, 4 blocks deep, d_ff 512, RoPE, pre-LayerNorm, GELU, tied
embeddings) on one tokenizer (vocabulary 8000, shared through config.data): GPT and BERT have 1,817,344 parameters
(56% of them the embedding table). T5 keeps the same depth, split evenly 2 + 2 as T5 itself does, but its two
decoder blocks carry cross-attention (+132,864 parameters, +7.3%); narrowing the MLP of all four of its blocks to
d_ff 384 pays for it: 1,818,624 parameters (+0.07%). The even split is T5's own design and changes only the MLP
width; a 3 + 1 split at d_ff 512 (+3.6%) would also be within tolerance but leaves the decoder a single block.

Budget: 4e13 training FLOPs each (model/flops.py), i.e. 3,353 steps of 8 x 128 tokens for GPT and BERT and, since
a T5 step costs less (the decoder only runs over the T = 29 target tokens), 8,158 T5 steps of 8 x (128 + 29). It
is the smallest budget tried at which every contender's fine-tuned probes beat chance on both tasks. At 4e12
(`--budget_flops=4e12`, about 12 minutes in all) every contender beats chance on word_order, but BERT and T5 stay
at chance on next_sentence (0.525 and 0.518, one standard error 0.016); at 1.2e13 BERT passes too (0.573) and T5
does not (0.525). T5 needs the most: next_sentence relates a to b across the whole text, which its decoder can
only get from the encoder, and the decoder learns to read its encoder late (train.evaluate --shuffle_encoder, the
loss increase with each row's encoder input taken from another row: +0.004 nats at 4e12, +0.031 at 1.2e13, +0.082
at 4e13). The batch is 8 rather than the tiny preset's 32: at these budgets more, smaller steps train every
contender better for the same FLOPs and about the same wall time (eval loss at 4e12 and the preset's learning rate
of 3e-3, batch 32 / batch 8: BERT 5.990 / 5.593, GPT 4.990 / 4.202, T5 4.530 / 4.159; tokens/s 8,900 / 7,900).

Learning rate: each contender trains at the peak learning rate with the lowest eval loss on its own objective in
the grid of experiments/suites/learning_rate.py (measured at 4e12 FLOPs, this batch and schedule shape; seed 0;
eval loss in nats; not re-run at 4e13, where the best rates may be somewhat lower):

  peak lr   5e-4    1e-3    2e-3    3e-3    5e-3
  BERT      5.256  *4.889   5.199   5.593   5.431
  GPT       4.672   4.411   4.246  *4.202   4.446
  T5        4.181   4.130  *4.112   4.159   4.205

One rate for all would shortchange someone: the tiny preset's 3e-3 (chosen at batch 32) left BERT's MLM on its
unigram plateau for most of the run (eval accuracy 10%, zero-shot word_order at chance, fine-tuned probes at
chance), while GPT loses 0.2 nats at 1e-3. BERT at 335 steps is still leaving that plateau, so its loss depends on
the seed: at 1e-3, seeds 0, 1, 2 give 4.889, 4.937, 5.213 (zero-shot word_order 73.6%, 69.3%, 63.4%); at 3e-3,
5.593, 5.789, 5.621 (49.1%, 53.9%, 63.0%): 1e-3 is better on every seed.

After training, every contender scores the probe pairs zero-shot (about a minute for all three) and is fine-tuned
on each probe task, as is the same model from a random init (12 runs of 600 steps, about 40 s each): the probe
columns of the report (experiments/probes.py). On 2 free cores training takes about 25 minutes and the whole
comparison about 33 (32 m 52 s measured); `--budget_flops=4e12` takes about 12 (12 m 20 s from a clean clone,
setting up .venv included). On 2 shared cores at load average 7-14 expect 3-4 times that.
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
            # Each at the peak learning rate of lowest eval loss in experiments/suites/learning_rate.py (above).
            "bert": dict(config="experiments/configs/bert.py:tiny", overrides={"train.learning_rate": 1e-3}),
            "gpt": dict(config="experiments/configs/gpt.py:tiny", overrides={"train.learning_rate": 3e-3}),
            "t5": dict(config="experiments/configs/t5.py:tiny",
                       overrides={"model.n_layers": 2, "model.n_decoder_layers": 2, "model.d_ff": 384,
                                  "train.learning_rate": 2e-3}),
        },
        # 4x the steps of the tiny preset's batch of 32 for the same FLOPs (see above); --config.train.batch_size=...
        # replaces it.
        overrides={"train.batch_size": 8},
        budget=("flops", 4e13),  # See the module docstring: the smallest tried where every probe beats chance.
        param_tolerance=0.05,
        evals=5,
        zero_shot=("next_sentence", "word_order"),  # About a minute for all three.
        probes=("next_sentence", "word_order"),  # 12 fine-tuning runs (with the random-init baselines).
    )
