"""Next-sentence prediction: does BERT's second objective help or hurt its masked LM? (RoBERTa's question.)

  python -m experiments.sweep --sweep=experiments/ablations/nsp.py --workdir=runs/nsp
  python -m experiments.sweep --sweep=experiments/ablations/nsp.py --workdir=runs/nsp --steps=600

BERT on the cheap CPU model trained with MLM alone ([CLS] window [SEP]) against MLM + NSP (objective.nsp:
[CLS] A [SEP] B [SEP], B the true continuation of A half of the time, a segment from elsewhere otherwise, and a
pooled-[CLS] head that tells which). Both see the same tokens per step at the same model size (the NSP head adds
D*D + 3D + 2 parameters). 2 settings x 6 seeds = 12 runs (the differences are small: more seeds than elsewhere).

Compare on the masked LM: eval/nll (the MLM loss) and eval/accuracy (masked-token accuracy), which both settings
report alike and which the report's eval-loss column and plots show. eval/loss is not comparable: with NSP it is
MLM loss + NSP loss (what that run minimises). eval/nsp_accuracy says how far the NSP runs got on the second task
(0.5 is chance).

What the default answers: at this scale NSP itself is not learned (the cheap model stays at chance even after
3000 steps; docs/results.md), so the default grid measures what the pair format and an unlearned NSP loss cost the
MLM at equal steps. The `tiny` BERT learns NSP only late in a 5000-step run; to compare with a learned NSP, train
at the tiny size for 5000 steps (about an hour per run on 2 CPU cores):
  ... --steps=5000 --config.data.seq_len=128 --config.model.max_len=128 --config.data.vocab_size=8000
      --config.model.d_model=128 --config.model.d_ff=512 --config.train.batch_size=32 --config.train.warmup_steps=30
"""

from experiments.sweep import CHEAP


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="BERT: MLM alone vs MLM + next-sentence prediction on the cheap CPU model; the eval-loss column "
                    "is the MLM's eval/nll (eval/loss would include the NSP loss).",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["bert"],
            "objective": {"mlm": {"objective.nsp": False}, "mlm+nsp": {"objective.nsp": True}},
        },
        seeds=[0, 1, 2, 3, 4, 5],
    )
