"""Print a file's statistics: python -m textstats.cli FILE"""
import sys

from textstats.counts import line_count, word_count


def main(argv):
    with open(argv[0], encoding="utf-8") as f:
        text = f.read()
    print(f"words: {word_count(text)}")
    print(f"lines: {line_count(text)}")


if __name__ == "__main__":
    main(sys.argv[1:])
