"""The report's words: which objective a run trains (for comparing losses), the budget line and the notes that
explain every column and test of report.md."""

from __future__ import annotations

import math

from data import minimal_pairs
from experiments import stats
from experiments.configs import base
from experiments.tables import probe_keys, probe_kind, si
from train.objectives import TokenObjective

OBJECTIVES = TokenObjective.DESCRIPTIONS  # name -> (short name, what its loss is)
BPB_OBJECTIVES = TokenObjective.COMPRESSES  # where nats per byte of predicted text are a compression rate


# Objective settings that change what its loss measures: runs that differ in one train different objectives.
TASK_SETTINGS = {"mlm": ("mask_rate", "whole_word"), "span_corruption": ("noise_density", "mean_span_length")}


def objective_of(name: str, config: dict) -> tuple[str, str]:
    """(objective id, short name) of a run: 'mlm' / 'masked LM' at the defaults of experiments/configs/base.py,
    'mlm[mask_rate=0.3]' / 'masked LM, mask_rate 0.3' where the run changed a setting of TASK_SETTINGS."""
    short = OBJECTIVES.get(name, (name,))[0]
    ran = (config.get("config") or {}).get("objective") or {}
    default = base.base_config("gpt").objective
    changed = [(k, ran[k]) for k in TASK_SETTINGS.get(name, ()) if k in ran and ran[k] != default[k]]
    if not changed:
        return name, short
    return (f"{name}[{','.join(f'{k}={v}' for k, v in changed)}]",
            f"{short}, {', '.join(f'{k} {v}' for k, v in changed)}")


def objective_names(groups: list[dict]) -> dict[str, tuple[str, str]]:
    """{objective id: (short name, what its loss is)} of the groups (panel titles and notes)."""
    return {g["objective_id"]: (g["objective"], OBJECTIVES.get(g["objective_name"], ("", ""))[1]) for g in groups}


def budget_line(plan: dict | None, groups: list[dict]) -> str:
    """Which budget was matched and the values the runs realised."""
    if not plan or not plan.get("budget"):
        return "Budget: none recorded (runs as configured)."
    kind, value = plan["budget"]["kind"], plan["budget"]["value"]
    key, what, fmt = {"flops": ("flops", "training FLOPs as the steps execute them (train/optim.py)", "{:.4g}"),
                      "tokens": ("tokens", "tokens seen (token positions)", "{:,.0f}"),
                      "seconds": ("train_seconds", "seconds of training steps (steps x median step time; compile "
                                  "and evaluation excluded)", "{:.1f}"),
                      "steps": ("steps", "optimizer steps", "{:.0f}")}[kind]
    got = [g.get(key) for g in groups if g.get(key) is not None]
    text = f"Matched: **{what}**, budget {fmt.format(value)} per run"
    if got:
        dev = max(abs(v / value - 1) for v in got)
        text += (f"; realised {fmt.format(min(got))} to {fmt.format(max(got))} "
                 f"(largest deviation from the budget {dev:.1%})")
    return text + "."


def _standard_error(groups: list[dict], key: str, unit: str) -> str:
    """' One standard error ...' of an accuracy near 50% on the fewest `key` any row evaluated on ('' if unknown)."""
    sizes = [g[key] for g in groups if g.get(key)]
    if not sizes:
        return ""
    n = int(min(sizes))
    return (f" One standard error of an accuracy near 50% on {n} {unit} is {50 / math.sqrt(n):.1f} points: "
            "differences of less than about two of them are noise.")


def notes(groups: list[dict], records: list[dict]) -> list[str]:
    names = objective_names(groups)
    out = ["**eval loss** (own objective) is the mean cross-entropy in nats per predicted token on the same "
           "validation batches at every evaluation (eval/nll: without z-loss or a next-sentence term), each row "
           "on its own objective: "
           + "; ".join(f"{short} = {meaning}" for short, meaning in sorted(set(names.values())))
           + ". These are different tasks: compare losses only between rows with the same objective (the lines "
           "above and the tests do). **train loss** is the last logged training loss, **acc** the eval accuracy "
           "of the objective's own predictions."]
    out.append("**bits/byte** (eval) is given only for " + ", ".join(OBJECTIVES[o][0] for o in BPB_OBJECTIVES)
               + ", where it is a compression rate of the validation text; masked-LM and span-corruption "
               "losses cover only the selected tokens, so their bits per byte are not (shown as -).")
    out.append("**tokens** counts token positions the model processes (L per example for GPT/BERT, encoder "
               "S + decoder T for T5), also the unit of tokens/s. **train FLOPs** are the matmul FLOPs the steps "
               "execute (training = 3 x forward, causal attention over the full square, a masked LM's head at its "
               "masked positions alone, plus Muon's Newton-Schulz matmuls; train/optim.py); report.json also has "
               "them per token, and the compile time.")
    src = sorted({(f"{si(g['peak_flops'], 'FLOP/s')}, " if g.get("peak_flops") else "") + g["peak_source"]
                  for g in groups if g.get("peak_source")})
    out.append("**MFU** = the train FLOPs of a step (as executed) / median step time / (peak FLOP/s x devices); "
               "peak: "
               + "; ".join(src) + " (a CPU peak measured while other work shares the cores is low, and MFU "
               "relative to it high). **wall** is the whole run (data, compile, evaluations, checkpoints) of its "
               "last invocation; **memory** is the peak: the allocator's high-water mark on GPU/TPU and XLA's "
               "memory analysis of the compiled step on CPU.")
    keys = probe_keys(groups)
    if any(probe_kind(k) == " (zero-shot)" for k in keys):
        out.append("**<task> 0-shot** (probe: <task> (zero-shot) above) is the share of the probe's evaluation "
                   "pairs (data/probes.py: intact text vs two adjacent words swapped; a with its own continuation "
                   "vs another text's) in which the pretrained model, with no training, scores the true member "
                   "higher: GPT by log-likelihood, BERT and T5 by pseudo-log-likelihood (each token masked in "
                   "turn), next_sentence by how much a raises the score of b (experiments/probes.py). Chance is 50%."
                   + _standard_error(groups, "zero_shot_pairs", "pairs"))
    if any(probe_kind(k) != " (zero-shot)" for k in keys):
        out.append("**<task>** (probe: <task>) is the evaluation accuracy after fine-tuning the pretrained model "
                   "with one recipe for all (experiments/configs/finetune.py); **<task> rand-init** (probe: <task> "
                   "(random init)) the same model and recipe from a random initialisation. Chance is 50%."
                   + _standard_error(groups, "probe_examples", "examples"))
    if any(g.get("resumed") for g in groups):
        out.append("Some runs were resumed: their wall and compile times cover the last invocation only.")
    if any(g.get("n", 1) > 1 for g in groups):
        out.append("Rows with several seeds (**seeds**) show the mean over seeds ± one standard error of the mean "
                   "(standard deviation with ddof=1 / sqrt(seeds)) in the quality and probe columns, the mean alone "
                   "in the cost columns; report.json has the standard deviations too.")
    if len(groups) > 1:
        out.append(
            "**Significance** (p < 0.05, two-sided) of the difference between two contenders on one shared column: "
            "with 2 or more seeds in common, a paired t-test over seeds (a pair = the same seed: the same "
            "initialisation seed and the same batches; exact Student-t distribution, experiments/stats.py); with one "
            f"seed, the zero-shot columns by a paired bootstrap over their evaluation pairs ({stats.RESAMPLES:,} "
            "resamples with a fixed seed, both contenders' results on the same pairs drawn together), which measures "
            "evaluation noise only, not the spread between training seeds. The fine-tuned probes and the losses keep "
            "no per-example results: with one seed they get no test; run --seeds=N with N >= 2 (3 or more advised). "
            "Where every seed gives the same difference the t-test is undefined (no spread): the zero-shot columns "
            "then get the paired bootstrap over the evaluation pairs of all seeds, the others an exact sign-flip test "
            "over the seeds (every sign of the n per-seed differences; its smallest p is 2 / 2^n: 0.25 with 3 seeds, "
            "below 0.05 from 6 seeds on). Each p-value is for one pair on one column, not corrected for multiple "
            "comparisons: of many pairs, some fall below 0.05 by chance.")
    if any(r["method"] is None and r["n"] == 1 for r in records):
        out.append("With one seed some differences above were not tested (marked 'one seed: no test').")
    return out


PUBLISHED_NAMES = {"ngram": "5-gram", "lstm": "LSTM", "txl": "Transformer-XL", "gpt2": "GPT-2"}


def published_table(groups: list[dict]) -> list[str]:
    """Markdown lines: BLiMP overall and per phenomenon of each group (report rows with 'probe/blimp (zero-shot)'
    and 'blimp/<phenomenon>', mean over seeds) beside the BLiMP paper's models (Warstadt et al. 2020, Table 3)."""
    rows = [g for g in groups if g.get("probe/blimp (zero-shot)") is not None]
    if not rows:
        return []
    pub = minimal_pairs.published()
    terms = sorted({k.removeprefix("blimp/") for g in rows for r in g["members"] for k in r if k.startswith("blimp/")})
    head = [g["group"] for g in rows] + [f"{PUBLISHED_NAMES[m]}*" for m in PUBLISHED_NAMES]
    lines = ["| BLiMP | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"
    lines.append("| **overall** | " + " | ".join([pct(g["probe/blimp (zero-shot)"]) for g in rows]
                                             + [pct(pub[m]["overall"]) for m in PUBLISHED_NAMES]) + " |")
    for term in terms:
        lines.append(f"| {term.replace('_', ' ')} | " + " | ".join(
            [pct(g.get(f"blimp/{term}")) for g in rows]
            + [pct(pub[m].get(f"phenomenon/{term}")) for m in PUBLISHED_NAMES]) + " |")
    return lines + ["", "\\* The BLiMP paper's models (Warstadt et al. 2020), trained on far more text than a Triad "
                    "contender (Transformer-XL on WikiText-103's 103 M tokens, GPT-2 on WebText's 8 M web pages) "
                    "and, but for the 5-gram, with far more parameters: for scale, not a like-for-like comparison. "
                    "The contenders score BLiMP's fixed subset or all of it (the BLiMP columns say how many pairs).",
                    ""]
