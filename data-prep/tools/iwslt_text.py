"""Plain lowercased text from the IWSLT'14 TED files (used by data-prep/prepare-iwslt14-de-en.sh), to stdout.

    python data-prep/tools/iwslt_text.py train train.tags.de-en.de      # transcript lines, metadata dropped
    python data-prep/tools/iwslt_text.py xml IWSLT14.TED.tst2010.de-en.de.xml ...   # the <seg> texts

As fairseq's prepare-iwslt14.sh: metadata lines (<url>, <talkid>, <keywords>, <speaker>, <reviewer>,
<translator>, <doc>) are dropped, <title>/<description> tags removed, everything lowercased.
"""

import html
import re
import sys

METADATA = ("<url", "<talkid", "<keywords", "<speaker", "<reviewer", "<translator", "<doc", "</doc")
TAGS = re.compile(r"</?(title|description)>")
SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def train_lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if not text.startswith(METADATA):
                yield TAGS.sub("", text).strip().lower()


def xml_lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if m := SEG.search(line):
                yield html.unescape(m.group(1)).strip().lower()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("train", "xml"):
        sys.exit("usage: python data-prep/tools/iwslt_text.py {train,xml} FILE...")
    extract = train_lines if argv[0] == "train" else xml_lines
    for path in argv[1:]:
        for text in extract(path):
            sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
