"""Makes this folder's train/validation files from the Standard Ebooks corpus, holding out whole books.

  python data/corpora/modern/make_split.py SRC_DIR      (SRC_DIR holds se_pd_worldwide.txt.gz, its index and book
                                                        list, as described in README.md; run once, not at run time)

A book is validation when it comes first in the order of the SHA-256 of its repository name, until the held-out
books hold at least VAL_WORDS of the words: no chapter of a validation book is in the training file, so the
validation loss and the probes built from it never see a neighbouring chapter of a training book. Both files keep
the source's line order; each has an index (line -> book, chapter file, words). gzip -n -9: the output is
byte-identical on every run.
"""

import csv
import gzip
import hashlib
import os
import shutil
import sys

VAL_WORDS = 0.05
HERE = os.path.dirname(os.path.abspath(__file__))


def main(src: str) -> None:
    with gzip.open(os.path.join(src, "se_pd_worldwide.txt.gz"), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    with open(os.path.join(src, "se_pd_worldwide.index.tsv"), encoding="utf-8") as f:
        index = list(csv.DictReader(f, delimiter="\t"))
    assert len(index) == len(lines), (len(index), len(lines))
    words: dict[str, int] = {}
    for row in index:
        words[row["repo"]] = words.get(row["repo"], 0) + int(row["words"])
    total, held, val = sum(words.values()), 0, set()
    for repo in sorted(words, key=lambda r: hashlib.sha256(r.encode()).hexdigest()):
        if held >= VAL_WORDS * total:
            break
        val.add(repo)
        held += words[repo]
    for split in ("train", "val"):
        keep = [i for i, row in enumerate(index) if (row["repo"] in val) == (split == "val")]
        with open(os.path.join(HERE, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines[i] + "\n" for i in keep)
        os.system(f"gzip -n -9 -f {os.path.join(HERE, split + '.txt')}")
        with open(os.path.join(HERE, f"{split}.index.tsv"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["line", "source_line", "repo", "file", "words"])
            for n, i in enumerate(keep, 1):
                w.writerow([n, index[i]["line"], index[i]["repo"], index[i]["file"], index[i]["words"]])
    with open(os.path.join(src, "standardebooks_books.tsv"), encoding="utf-8") as f:
        books = [b for b in csv.DictReader(f, delimiter="\t") if b["file"] == "se_pd_worldwide.txt.gz"]
    with open(os.path.join(HERE, "books.tsv"), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["repo", "commit", "title", "author", "first_published", "documents", "words", "split"])
        for b in books:
            w.writerow([b["repo"], b["commit"], b["title"], b["author"], b["first_published"], b["documents"],
                        b["words"], "val" if b["repo"] in val else "train"])
    shutil.copy(os.path.join(src, "README.md"), os.path.join(HERE, "SOURCE_README.md"))
    print(f"{len(val)} validation books, {held:,} of {total:,} words ({held / total:.1%}): {sorted(val)}")


if __name__ == "__main__":
    main(sys.argv[1])
