"""Every read and write of network weights in their outside forms. The map of the house:

    tree.py        one flatten/unflatten of weight trees (tuple or dotted paths) and of an NNX model's variables
    artifact.py    the marker that says a converted folder is complete (written last, format checked)
    keymap.py      the one table between upstream DiT state-dict keys and our parameter tree
    pt.py          upstream `.pt` files, read and written one tensor at a time without torch
    folder.py      the converted DiT folder: blockwise Orbax, `checkpoint.load_path`
    dit.py         DiT weights: `load` for inference (job, converted folder or `.pt`), `load_into_state` and
                   `fresh_state` for training, `convert` (`.pt` -> folder)
    checkpoint.py  a training job's checkpoint: Orbax steps, `.pt` export retention, free-space checks
    export.py      our weights out as upstream files: the streamed `.pt` export, a job or a folder as `.pt`,
                   LoRA adapters in PEFT's layout
    t5.py          T5 weights: the HF key table, the converted and synthetic folders, the one `TextEncoder`
    t5_convert.py  a Hugging Face T5 folder's files read and converted
    tokenizer.py   the tokenizer's release files, its converted folder, and the Tokenizer a config names

`converters/` holds the command lines over these modules; nothing here imports it. `cosmos_jax/models/` holds the
networks only.
"""
