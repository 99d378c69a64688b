"""Packing with or without document masks: windows cut from the document stream as they are, or with attention
kept inside each document and positions restarting at each (data.document_mask, as MaxText packs).

  python -m experiments.sweep --sweep=experiments/ablations/packing.py --workdir=runs/packing

Both points see the same tokens and the same batches (same seeds); only the mask and the positions change, so
parameters and FLOPs are equal (the mask is counted over the full square either way, model/flops.py). The bundled
corpus has one verse per document (about 30 tokens), so a 64-token window holds two or three documents.
2 x 3 architectures x 2 seeds = 12 runs of the cheap CPU model.
"""

from experiments.sweep import CHEAP


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="Document masks on packed windows (data.document_mask) on the cheap CPU model.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "data.document_mask": [False, True],
        },
        seeds=[0, 1],
    )
