"""Our lmms-eval model: an already loaded HF model of a supported family + processor + pruner.

Differences from lmms-eval's built-in HF wrappers, all deliberate:
- It is passed to `simple_evaluate` as an instance (no registry, no `model_args` string), so one
  loaded model serves many evaluations; `clean()` therefore keeps the model (the base class deletes
  every `nn.Module` attribute after each evaluation).
- Generation errors propagate. The built-in wrappers turn an exception into an empty answer, which
  makes a broken pruner look like a weak one.
- Greedy decoding always (`do_sample=False`); `max_new_tokens` = the task's value capped by ours;
  the task's `until` strings truncate the decoded answer.
- Every request is timed and recorded (`records`), one `SampleRecord` per request, for the results table.
- One image per prompt: a document with several images goes through the `multi_image` policy
  (`mmtok.eval.prompts.pick_image`: error | first | middle); the resize baseline scales it
  (`protocol.image_scale`, `mmtok.eval.prompts.scale_image`) before anything else sees it.
- The family (`model.config.model_type`) picks the prompt, the image preprocessing and the stop
  strings (`mmtok.eval.prompts` asks the family's `InputRules`); everything else is the same for
  every family.
"""

from __future__ import annotations

import json

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from transformers import LogitsProcessorList

from mmtok.eval.prompts import (
    build_prompt,
    check_multi_image,
    check_options,
    pick_image,
    preprocess_image,
    scale_image,
    stop_strings,
)
from mmtok.eval.protocol import DEFAULT_PROTOCOL, RunProtocol
from mmtok.eval.records import SampleRecord
from mmtok.models.adapters import ImageSource
from mmtok.timing import FirstTokenTimer, now


class PrunedLM(lmms):
    """Simple (non-chat) lmms-eval model: `generate_until` requests, one image each reaching the LLM."""

    is_simple = True

    def __init__(self, model, processor, pruner, protocol: RunProtocol = DEFAULT_PROTOCOL):
        super().__init__()
        self.model_type = str(getattr(model.config, "model_type", None))
        check_options(protocol.prompt_format, protocol.image_preprocess, self.model_type)
        check_multi_image(protocol.multi_image)
        if protocol.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {protocol.batch_size}")
        if protocol.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {protocol.max_new_tokens}")
        if not 0.0 < protocol.image_scale <= 1.0:
            raise ValueError(f"image_scale must be a number in (0, 1], got {protocol.image_scale!r}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.pruner = pruner
        self.protocol = protocol
        self.batch_size = protocol.batch_size
        self.max_new_tokens = protocol.max_new_tokens
        self.prompt_format = protocol.prompt_format
        self.image_preprocess = protocol.image_preprocess
        self.multi_image = protocol.multi_image
        self.progress = protocol.progress
        # Single process: a present-but-None accelerator stops the evaluator from creating one.
        self.accelerator = None
        self.records: list[SampleRecord] = []

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- lmms-eval API --------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError(
            "PrunedLM only generates: loglikelihood (multiple-choice scoring) is not implemented; "
            "use generate_until tasks (POPE, GQA, MME)"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(
            "PrunedLM only answers single-turn generate_until requests; multi-round generation is not implemented"
        )

    def clean(self):
        """Keep the model: the base class deletes every nn.Module attribute after an evaluation."""
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm import tqdm

        answers: list[str | None] = [None] * len(requests)
        records: list[SampleRecord | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=not self.progress, desc="mmtok generate")
        for batch in self._batches([req.args for req in requests]):
            for i, answer, record in self._run_batch(batch):
                answers[i], records[i] = answer, record
            bar.update(len(batch))
        bar.close()
        self.records.extend(records)
        return answers

    def _batches(self, args: list[tuple]) -> list[list[tuple]]:
        """Batches of `batch_size` requests, each request's args + its index appended.

        lmms-eval's convention: batches never mix generation settings, and within one setting the
        longest prompts come first (an OOM shows at once; batches have similar lengths)."""
        keyed = []
        for i, a in enumerate(args):
            keyed.append((_gen_key(a[1]), -len(self.tokenizer(a[0])["input_ids"]), a[0], i))
        keyed.sort()
        batches, current = [], []
        for gen_key, _, _, i in keyed:
            if current and (len(current) == self.batch_size or _gen_key(current[0][1]) != gen_key):
                batches.append(current)
                current = []
            current.append((*args[i], i))
        if current:
            batches.append(current)
        return batches

    # -- one batch ------------------------------------------------------------------------------
    def _run_batch(self, batch: list[tuple]) -> list[tuple[int, str, dict]]:
        """Answer one batch; returns (request index, answer, record) per request.

        Latency split (seconds, one value per batch, given to each of its samples):
        total = preprocessing + vision + select + prefill + decode (+ decoding to text), where
        vision / select are the pruner's own measurements inside its `generate`, prefill runs from
        the end of selection to the first generated token's logits, decode is the rest."""
        device = self.device
        t0 = now(device)
        contexts = [b[0] for b in batch]
        gen_kwargs = dict(batch[0][1] or {})
        docs = [self.task_dict[task][split][doc_id] for (_, _, _, doc_id, task, split, _) in batch]
        images, n_images, sources = [], [], []
        for (_, _, doc_to_visual, doc_id, task, _, _), doc in zip(batch, docs):
            visuals = list(doc_to_visual(doc) or [])
            image = pick_image(visuals, self.multi_image, where=f"{task} doc {doc_id}")
            image = scale_image(image, self.protocol.image_scale)
            n_images.append(len(visuals))
            sources.append(ImageSource(*image.size, self.image_preprocess))  # what the family's rule receives
            images.append(preprocess_image(image, self.processor, self.image_preprocess, self.model_type))
        prompts = [build_prompt(self.processor, c, self.prompt_format, self.model_type) for c in contexts]
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True, padding_side="left")
        inputs = inputs.to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        image_id = self.model.config.image_token_id
        # prompt tokens other than the image placeholders (the processor expands <image> to the
        # full vision token count) and other than the batch's left padding
        text_tokens = ((inputs["input_ids"] != image_id) & inputs["attention_mask"].bool()).sum(dim=1).tolist()

        max_new = min(int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)), self.max_new_tokens)
        until = stop_strings(gen_kwargs.get("until"), self.model_type)
        timer = FirstTokenTimer(device)
        applied = self.pruner(self.model, tokenizer=self.tokenizer, questions=contexts, sources=sources)
        with applied, torch.inference_mode():
            t_gen = now(device)
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                logits_processor=LogitsProcessorList([timer]),
            )
            t_end = now(device)
        stats = self.pruner.last_stats
        if timer.first is None or len(stats.samples) != len(batch):
            raise RuntimeError("generate did not run the pruner's request path (no first-token time / no stats)")

        eos = self.model.generation_config.eos_token_id
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        texts, counts = [], []
        for row in out[:, inputs["input_ids"].shape[1] :].tolist():
            n = next((j + 1 for j, tok in enumerate(row) if tok in eos), len(row))  # through the first EOS
            counts.append(n)
            texts.append(self.tokenizer.decode(row[:n], skip_special_tokens=True))
        t_done = now(device)

        vision_s, select_s = float(stats.vision_s), float(stats.select_s)
        # The `generate` called above is the pruner's: it encodes and selects (timed by the pruner),
        # then runs the LLM's generate. What remains up to the first logits is the LLM prefill.
        prefill_s = timer.first - t_gen - vision_s - select_s
        decode_s = t_end - timer.first
        results = []
        for k, (context, _, _, doc_id, task, _, index) in enumerate(batch):
            # Stop strings cut the answer; surrounding whitespace goes, like the original evaluation
            # scripts of the paper's models (`outputs.strip()`); lmms-eval's POPE / MME scoring strips as well.
            answer = _truncate(texts[k], until).strip()
            s = stats.samples[k]
            record = SampleRecord(
                task=task,
                doc_id=doc_id,
                question=context,
                answer=answer,
                target=None,
                category=docs[k].get("category"),
                vision_tokens=int(s.vision_tokens),
                vision_tokens_full=int(s.vision_tokens_full),
                equivalent_tokens=s.equivalent_tokens,
                crops=int(s.crops),
                n_images=n_images[k],
                vision_s=vision_s,
                select_s=select_s,
                prefill_s=prefill_s,
                decode_s=decode_s,
                total_s=t_done - t0,
                new_tokens=counts[k],
                text_tokens=int(text_tokens[k]),
                prefill_tokens=int(text_tokens[k]) + int(s.vision_tokens),
                layer_vision_tokens=_int_list(s.layer_vision_tokens),
                batch_size=len(batch),
            )
            results.append((index, answer, record))
        return results


def _int_list(values) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _gen_key(gen_kwargs) -> str:
    """Batches never mix generation settings (lmms-eval groups by them the same way)."""
    return json.dumps(gen_kwargs, sort_keys=True, default=str)


def _truncate(text: str, until: list[str]) -> str:
    """Cut at the first occurrence of any stop string (the task's `until`)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
