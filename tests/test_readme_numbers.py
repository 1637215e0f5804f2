"""tools/readme_numbers.py: the chain it runs is the README's, and its lines land between the markers."""

import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("readme_numbers", os.path.join(ROOT, "tools", "readme_numbers.py"))
rn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rn)
README = open(os.path.join(ROOT, "README.md")).read()


def _flags(words):
    """{flag: value} of a train command's words (the task first)."""
    out, i = {"task": words[1]}, 2
    while i < len(words):
        has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        out[words[i]] = words[i + 1] if has_value else True
        i += 2 if has_value else 1
    return out


def test_the_chain_is_the_readmes_commands():
    joined = README.replace("\\\n", " ")
    written = [_flags(line.split()[1:]) for line in joined.splitlines()
               if line.strip().startswith("recogfast train") and "--dataset shapes196" in line and "--out runs/shapes-" in line]
    assert len(written) == 2
    for name, cmd in rn.chain("runs"):
        ours = _flags([a.replace(os.sep, "/") for a in cmd])
        for flag in ("--quiet", "--no-report", "--overwrite"):
            ours.pop(flag)
        assert ours in written, (name, ours, written)


def test_lines_go_between_the_markers():
    for name in ("task4-ms", "task4-classifier"):
        assert f"<!-- readme-numbers:{name} -->" in README and f"<!-- /readme-numbers:{name} -->" in README
    out = "epoch 5/5 train_loss 1.0\nbest val map@r 0.7000 at epoch 4\nTEST (epoch 4, best val map@r): recall@1 0.4\n"
    lines = rn.result_lines(out, "runs", "runs/shapes-ms")
    assert lines == ["best val map@r 0.7000 at epoch 4", "TEST (epoch 4, best val map@r): recall@1 0.4",
                     "run folder: runs/shapes-ms"]
    text = rn.replace_block(README, "task4-ms", lines)
    block = text.split("<!-- readme-numbers:task4-ms -->")[1].split("<!-- /readme-numbers:task4-ms -->")[0]
    assert block == "\n\n" + "\n".join("    " + line for line in lines) + "\n\n"
    assert rn.replace_block(text, "task4-ms", lines) == text  # idempotent
    assert text.replace(block, "") .count("best val map@r 0.7000") == 0
