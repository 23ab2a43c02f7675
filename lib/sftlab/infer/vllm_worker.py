"""The vLLM side of the vLLM engine: a process in vLLM's own environment (`make setup-vllm`), driven by
`sftlab.infer.vllm_engine.VLLMEngines` over stdin/stdout, one JSON object a line each way.

    .venv-vllm/bin/python lib/sftlab/infer/vllm_worker.py

It imports nothing of sftlab (vLLM pins its own torch and transformers): the parent tokenizes with the
model's chat template, sends token ids, and gets token ids back, so both engines see the same prompts.

Requests and replies:
    {"op": "load", "model": PATH, "dtype": "float32", "seed": 0, "max_model_len": 2048, "tensor_parallel_size": 1}
        -> {"ok": true, "seconds": s}                         a fresh engine
    {"op": "swap", "model": PATH, "tied": bool}
        -> {"ok": true, "seconds": s, "swapped": true, "retied": bool}   weights reloaded in place (same
                                                              architecture); a tied output head re-tied
    {"op": "generate", "prompts": [[ids...]], "settings": {...}, "stop_token_ids": [...]}
        -> {"ok": true, "outputs": [{"token_ids": [...], "finish_reason": "stop" | "length"}]}
    {"op": "prompt_logprobs", "prompts": [[ids...]]}
        -> {"ok": true, "logprobs": [[log p(token i | tokens before it), ...]]}   the swap check
    {"op": "quit"}
A failure replies {"ok": false, "error": "..."} and the worker keeps serving.
"""

import json
import os
import sys
import time
import traceback

# Run by path, this file's folder is first on sys.path: its neighbours (sftlab's infer modules) must not
# shadow vLLM's own modules.
sys.path = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]


def sampling_params(settings: dict, stop_token_ids: list):
    from vllm import SamplingParams

    greedy = not settings.get("do_sample")
    return SamplingParams(
        max_tokens=settings["max_new_tokens"],
        temperature=0.0 if greedy else settings.get("temperature", 1.0),
        top_p=1.0 if greedy else settings.get("top_p", 1.0),
        top_k=(settings.get("top_k") or 0) if not greedy else 0,  # 0: no top-k filtering
        repetition_penalty=settings.get("repetition_penalty", 1.0),
        seed=None if greedy else settings.get("seed"),
        stop_token_ids=list(stop_token_ids),
        ignore_eos=True,  # the stop tokens above are the only ends, exactly as in the HF engine
        detokenize=False,
    )


def retie_output_head(worker) -> bool:
    """After an in-place reload of a model whose output head shares the input embeddings' weight: point the
    head at the embeddings' weight again and redo the head's post-load processing. The reload copies the new
    values into the embeddings' tensor but loads nothing into the head (a tied checkpoint holds no
    lm_head.weight), so vLLM puts the head back as it was; on CPU its matrix product runs on a copy of the
    weight prepacked at the first load (oneDNN or packed kernels), which the reload leaves stale. Returns
    False for a model without `lm_head` and `model.embed_tokens`, whose head then stays as the reload left it
    (the parent's swap check decides)."""
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    embeddings = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or getattr(embeddings, "weight", None) is None or getattr(head, "quant_method", None) is None:
        return False
    if head.weight is not embeddings.weight:
        head.weight = embeddings.weight
    head.quant_method.process_weights_after_loading(head)
    return True


def main() -> None:
    llm = None
    out = sys.stdout
    sys.stdout = sys.stderr  # vLLM's own prints must not corrupt the protocol
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        started = time.time()
        try:
            if op == "quit":
                break
            if op == "load":
                from vllm import LLM

                llm = LLM(model=request["model"], tokenizer=request["model"], dtype=request.get("dtype", "float32"),
                          seed=request.get("seed", 0), enforce_eager=True,
                          max_model_len=request.get("max_model_len", 2048), skip_tokenizer_init=True,
                          tensor_parallel_size=request.get("tensor_parallel_size", 1))
                reply = {"ok": True}
            elif op == "swap":
                llm.collective_rpc("reload_weights", kwargs={"weights_path": request["model"]})
                retied = all(llm.collective_rpc(retie_output_head)) if request.get("tied") else False
                # Cached prefixes hold keys and values computed with the old weights: drop them.
                reset = llm.reset_prefix_cache()
                reply = {"ok": True, "swapped": True, "retied": retied, "prefix_cache_reset": bool(reset)}
            elif op == "generate":
                from vllm.inputs import TokensPrompt

                params = sampling_params(request["settings"], request["stop_token_ids"])
                results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]], params,
                                       use_tqdm=False)
                reply = {"ok": True, "outputs": [{"token_ids": list(r.outputs[0].token_ids),
                                                  "finish_reason": r.outputs[0].finish_reason} for r in results]}
            elif op == "prompt_logprobs":  # log p(token | prefix) of every prompt token after the first
                from vllm import SamplingParams
                from vllm.inputs import TokensPrompt

                params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
                results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]], params,
                                       use_tqdm=False)
                reply = {"ok": True, "logprobs": [
                    [entry[token].logprob for entry, token in zip(r.prompt_logprobs[1:], ids[1:])]
                    for r, ids in zip(results, request["prompts"])]}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as e:  # reported to the parent, which raises with it
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-4000:]}
        reply["seconds"] = round(time.time() - started, 3)
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
