"""captioning.browse: a dataset's grid, and a misspelt override in one line."""

from __future__ import annotations


def test_browse_writes_a_dataset_grid(flickr8k_kaggle, tmp_path):
    import kangas

    from captioning.browse import main

    out = tmp_path / "browse.datagrid"
    assert main(["dataset=flickr8k", f"dataset.root={flickr8k_kaggle}", f"out={out}"]) == 0
    rows = list(kangas.read_datagrid(str(out)).to_dicts())
    assert len(rows) == 4 and {r["split"] for r in rows} == {"train", "val"}
    assert main(["dataset=flickr8k", f"dataset.root={tmp_path}/missing"]) == 2


def test_browse_names_a_misspelt_override_in_one_line(capsys):
    from captioning.browse import main

    assert main(["dataset.nonsense=1"]) == 2
    assert main(["dataset=flikr8k"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("error: Could not override 'dataset.nonsense'. "
                      "To append to your config use +dataset.nonsense=1")
    assert len(err) == 2
    assert err[1].startswith("error: In 'config': Could not find 'dataset/flikr8k'")
