"""One decoder graph for both steps, as optimum's `merge_decoders` writes it and transformers.js reads it.

    onnx/decoder_model_merged{,_quantized}.onnx
        inputs:  input_ids (b, t), encoder_hidden_states (b, 1500, d),
                 past_key_values.{i}.{decoder,encoder}.{key,value}, use_cache_branch (bool, [1])
        outputs: logits (b, t, vocab), present.{i}.{decoder,encoder}.{key,value}

One `If` node on `use_cache_branch`: false runs decoder_model (the prompt; the past inputs are ignored, empty
tensors do), true runs decoder_with_past_model (one token; the `present.*.encoder.*` outputs are then empty
constants: the caller keeps the cross-attention cache of the first step, as optimum and transformers.js do).
The two branches' weights are stored once (initializers deduplicated by content, in the outer graph; scalars and
1-D integer constants stay in their branch, as optimum keeps them), and a weight that is the transpose of another
(Whisper's output projection, tied to the token embedding) is stored once and transposed by a node, which
onnxruntime folds when it loads the graph.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

__all__ = ["USE_CACHE_BRANCH", "MERGED_NAME", "merged_name", "merge_decoders", "merge_export_decoders", "run_merged"]

log = logging.getLogger("litewhisper")

USE_CACHE_BRANCH = "use_cache_branch"
MERGED_NAME = "decoder_model_merged"
_INTEGER_TYPES = (6, 7)  # onnx.TensorProto.INT32, INT64


def merged_name(decoder: Path) -> Path:
    """onnx/decoder_model[_quantized].onnx -> onnx/decoder_model_merged[_quantized].onnx."""
    return decoder.with_name(decoder.name.replace("decoder_model", MERGED_NAME, 1))


def _stays_in_branch(init) -> bool:
    """optimum keeps scalars and 1-D integer tensors (shapes, axes) inside the branch that uses them."""
    return len(init.dims) == 0 or (len(init.dims) == 1 and init.data_type in _INTEGER_TYPES)


def _content_key(init) -> tuple:
    from onnx import numpy_helper

    data = numpy_helper.to_array(init)
    return init.data_type, tuple(init.dims), hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _rename_inputs(graph, names: dict[str, str]) -> None:
    """Point every node input of `graph` (and of its subgraphs) named in `names` at the new name."""
    from onnx import AttributeProto

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                node.input[i] = names[name]
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _rename_inputs(attr.g, names)
            for sub in attr.graphs:
                _rename_inputs(sub, names)


def _value_names(graph) -> set[str]:
    """Names of the inputs and node outputs of `graph` (not of its subgraphs)."""
    return {i.name for i in graph.input} | {o for node in graph.node for o in node.output}


def _shared_initializers(models: list) -> list:
    """Move the large initializers of `models` into one deduplicated list (for the outer graph); renames the
    branches' inputs so that equal tensors share one name and different tensors never share one."""
    from onnx import TensorProto

    used = set().union(*(_value_names(m.graph) for m in models))
    used |= {init.name for m in models for init in m.graph.initializer if _stays_in_branch(init)}
    shared, by_key = [], {}
    for i, model in enumerate(models):
        keep, names = [], {}
        for init in model.graph.initializer:
            copy = TensorProto()
            copy.CopyFrom(init)
            if _stays_in_branch(init):
                keep.append(copy)
                continue
            key = _content_key(init)
            if key not in by_key:
                by_key[key] = init.name if init.name not in used else f"{init.name}_merged{i}"
                used.add(by_key[key])
                copy.name = by_key[key]
                shared.append(copy)
            names[init.name] = by_key[key]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        _rename_inputs(model.graph, names)
    return shared


def _gather_tables(models: list) -> set[str]:
    """Names of the tensors that Gather nodes (token embeddings) of `models` look up."""
    return {n.input[0] for m in models for n in m.graph.node if n.op_type == "Gather"}


def _tie_transposed(shared: list, tables: set[str]) -> tuple[list, list]:
    """Drop each float weight that is the exact transpose of an embedding table kept in `shared`; returns the
    Transpose nodes that recreate them (same names) in the outer graph."""
    import onnx
    from onnx import numpy_helper

    transposed = {}
    for init in shared:
        if init.name in tables and init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            array = np.ascontiguousarray(numpy_helper.to_array(init).T)
            digest = hashlib.sha256(array.tobytes()).hexdigest()
            transposed[(init.data_type, array.shape, digest)] = init.name
    nodes, kept = [], []
    for init in shared:
        source = transposed.get(_content_key(init)) if init.name not in tables else None
        if source is None:
            kept.append(init)
            continue
        log.info("merged decoder: %s stored once, as the transpose of %s", init.name, source)
        nodes.append(onnx.helper.make_node("Transpose", [source], [init.name], name=f"tie/{init.name}", perm=[1, 0]))
    return nodes, kept


def _past_name(present: str) -> str:
    return present.replace("present", "past_key_values", 1)


def _branch_outputs(decoder, with_past) -> None:
    """Give `with_past` the outputs of `decoder`, in its order and with its declared types; an output it lacks
    (the cross-attention cache) becomes an empty constant shaped like the matching past input."""
    import onnx

    have = {o.name for o in with_past.graph.output}
    inputs = {i.name: i for i in with_past.graph.input}
    outputs = []
    for out in decoder.graph.output:
        outputs.append(out)
        if out.name in have:
            continue
        like = inputs.get(_past_name(out.name), out)
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in like.type.tensor_type.shape.dim]
        dims = dims if 0 in dims else [0, *dims[1:]]
        empty = onnx.helper.make_tensor(f"{out.name}/empty", out.type.tensor_type.elem_type, dims, vals=[])
        with_past.graph.node.append(
            onnx.helper.make_node("Constant", [], [out.name], name=f"{out.name}/constant", value=empty)
        )
    del with_past.graph.output[:]
    with_past.graph.output.extend(outputs)


def _opsets(models: list) -> list:
    import onnx

    versions: dict[str, int] = {}
    for m in models:
        for op in m.opset_import:
            versions[op.domain] = max(versions.get(op.domain, 0), op.version)
    return [onnx.helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())]


def merge_decoders(decoder: Path, decoder_with_past: Path, out: Path) -> Path:
    """Write the merged decoder of the two graphs to `out` (see the module docstring); returns `out`."""
    import onnx

    from litewhisper.export.api import ExportError

    first, step = onnx.load(str(decoder)), onnx.load(str(decoder_with_past))
    _branch_outputs(first, step)
    tables = _gather_tables([first, step])
    shared = _shared_initializers([first, step])
    ties, shared = _tie_transposed(shared, tables)
    branches = {}
    for model, name in ((first, "no_past"), (step, "with_past")):
        graph = model.graph
        branches[name] = onnx.helper.make_graph(
            list(graph.node), name, [], list(graph.output), list(graph.initializer), value_info=list(graph.value_info)
        )
    inputs = list(first.graph.input)
    inputs += [i for i in step.graph.input if i.name not in {x.name for x in inputs}]
    inputs.append(onnx.helper.make_tensor_value_info(USE_CACHE_BRANCH, onnx.TensorProto.BOOL, [1]))
    branch = onnx.helper.make_node(
        "If",
        [USE_CACHE_BRANCH],
        [o.name for o in first.graph.output],
        name="litewhisper::if",
        then_branch=branches["with_past"],
        else_branch=branches["no_past"],
    )
    graph = onnx.helper.make_graph([*ties, branch], "merged", inputs, list(first.graph.output), shared)
    merged = onnx.helper.make_model(graph, opset_imports=_opsets([first, step]), producer_name="litewhisper")
    merged.ir_version = max(first.ir_version, step.ir_version)
    if merged.ByteSize() >= 2**31:
        raise ExportError(f"the merged decoder of {decoder.name} is over 2 GB, which one ONNX file cannot hold")
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))
    log.info("merged %s + %s -> %s", decoder.name, decoder_with_past.name, out.name)
    return out


def merge_export_decoders(onnx_dir: Path, keep_separate: bool = False) -> list[Path]:
    """Merge each pair decoder_model{sfx}.onnx + decoder_with_past_model{sfx}.onnx in `onnx_dir` (the separate
    graphs are removed unless `keep_separate`); returns the merged graphs' paths."""
    merged = []
    for decoder in sorted(onnx_dir.glob("decoder_model*.onnx")):
        if decoder.name.startswith(MERGED_NAME):
            continue
        with_past = decoder.with_name(decoder.name.replace("decoder_model", "decoder_with_past_model", 1))
        if not with_past.is_file():
            continue
        merged.append(merge_decoders(decoder, with_past, merged_name(decoder)))
        if not keep_separate:
            decoder.unlink()
            with_past.unlink()
    return merged


def run_merged(session, states: np.ndarray, ids: np.ndarray, prompt: int) -> np.ndarray:
    """Logits (b, t, vocab) of `ids` (b, t) from a merged-decoder session, as transformers.js runs it: the first
    `prompt` tokens in one call without cache (empty past tensors), then one token per call with the cache."""
    outputs = [o.name for o in session.get_outputs()]
    feeds = {"input_ids": ids[:, :prompt], "encoder_hidden_states": states, USE_CACHE_BRANCH: np.array([False])}
    for arg in session.get_inputs():
        if arg.name.startswith("past_key_values."):  # (b, heads, 0, d_head): symbolic axes empty
            shape = [ids.shape[0] if i == 0 else d if isinstance(d, int) else 0 for i, d in enumerate(arg.shape)]
            feeds[arg.name] = np.zeros(shape, np.float32)
    result = dict(zip(outputs, session.run(None, feeds), strict=True))
    logits = [result["logits"]]
    cache = {_past_name(k): v for k, v in result.items() if k.startswith("present.")}
    for t in range(prompt, ids.shape[1]):
        feeds = {"input_ids": ids[:, t : t + 1], "encoder_hidden_states": states, USE_CACHE_BRANCH: np.array([True])}
        result = dict(zip(outputs, session.run(None, {**feeds, **cache}), strict=True))
        logits.append(result["logits"])
        # the with-past branch returns the self-attention cache; the cross-attention one is kept from the start
        cache.update({_past_name(k): v for k, v in result.items() if k.startswith("present.") and ".decoder." in k})
    return np.concatenate(logits, axis=1)
