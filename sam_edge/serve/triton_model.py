"""sam_predictor: the Triton Python-backend model that `sam-edge export-triton` writes
as sam_predictor/1/model.py. It runs inside Triton, where triton_python_backend_utils
exists and sam-edge's lean runtime is installed (pip install sam-edge).

One request is one prompt for one image (a leading batch dim of 1):
    IMAGE (H, W, 3) uint8 RGB and/or IMAGE_ID (string); a prompt of POINT_COORDS
    (N, 2) + POINT_LABELS (N,), BOX (4,) XYXY, MASK_INPUT (1, m, m), in image
    pixels; MULTIMASK_OUTPUT (bool, default true). No prompt: embed only.
Answers RESOLVED_IMAGE_ID, MASKS (C, H, W) bool, SCORES (C,), LOW_RES_LOGITS (C, m, m).

Embeddings stay here, in an EmbeddingCache keyed by image id (content hash unless
given). A prompt by IMAGE_ID alone that misses is an error response that says to
resend the image; a prompt with IMAGE re-embeds. Prompts for one image in one
execute() go to the decoder as one call.
"""

import json
from types import SimpleNamespace

import numpy as np
import triton_python_backend_utils as pb_utils

from sam_edge import postprocess
from sam_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from sam_edge.runtime.prompt_layout import decoder_prompt_feed
from sam_edge.runtime.transforms import ResizeLongestSide
from sam_edge.serve.api import image_id_of
from sam_edge.serve.cache import CachedEmbedding, EmbeddingCache


class RequestFailed(ValueError):
    """A request this model answers with an error response (the others go on)."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.image_size = int(params["image_size"])
        self.mask_input_size = int(params["mask_input_size"])
        self.encoder_model = params["encoder_model"]
        self.decoder_model = params["decoder_model"]
        self.cache = EmbeddingCache(int(params["cache_bytes"]))
        self.transform = ResizeLongestSide(self.image_size)
        # The backend's normalise-and-pad reads only image_size: reuse it, not a copy.
        self._frame = SimpleNamespace(image_size=self.image_size)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            try:
                image_id, entry, prompt = self._prepare(request)
            except RequestFailed as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                continue
            if prompt is None:
                responses[i] = self._response(image_id, np.zeros((0,) + entry.original_size, bool),
                                              np.zeros(0, np.float32),
                                              np.zeros((0, self.mask_input_size, self.mask_input_size), np.float32))
                continue
            key = (image_id, prompt["key"])
            groups.setdefault(key, []).append((i, entry, prompt))
        for (image_id, _), members in groups.items():
            try:
                answers = self._decode(members[0][1], [p for _, _, p in members])
            except RequestFailed as exc:
                for i, _, _ in members:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                continue
            for (i, _, _), (masks, scores, low_res) in zip(members, answers):
                responses[i] = self._response(image_id, masks, scores, low_res)
        return responses

    # ---- one request -------------------------------------------------------
    @staticmethod
    def _input(request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        array = tensor.as_numpy()
        if array.shape[:1] != (1,):
            raise RequestFailed(f"{name}: one prompt per request (batch dimension 1); got shape {array.shape}")
        return array[0]

    def _prepare(self, request):
        image = self._input(request, "IMAGE")
        given = self._input(request, "IMAGE_ID")
        image_id = None
        if given is not None:
            raw = given.reshape(-1)[0]
            image_id = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        if image is not None:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise RequestFailed(f"IMAGE must be (H, W, 3) uint8 RGB; got {image.shape} {image.dtype}")
            image_id = image_id or image_id_of(image)
        elif not image_id:
            raise RequestFailed("give IMAGE_ID of an embedded image, or IMAGE")
        entry = self.cache.get(image_id)
        if entry is None:
            if image is None:
                raise RequestFailed(f"IMAGE_ID {image_id!r} is not cached (evicted or never embedded); "
                                    "resend the request with IMAGE")
            entry = self._embed(image)
            self.cache.put(image_id, entry)
        return image_id, entry, self._prompt(request, entry)

    def _prompt(self, request, entry):
        coords, labels = self._input(request, "POINT_COORDS"), self._input(request, "POINT_LABELS")
        box, mask = self._input(request, "BOX"), self._input(request, "MASK_INPUT")
        multimask = self._input(request, "MULTIMASK_OUTPUT")
        if coords is None and box is None and mask is None:
            return None
        h, w = entry.original_size
        prompt = {"coords": None, "labels": None, "box": None, "mask": None,
                  "multimask": True if multimask is None else bool(multimask.reshape(-1)[0])}
        if (coords is None) != (labels is None):
            raise RequestFailed("POINT_COORDS and POINT_LABELS go together")
        for name, value in (("POINT_COORDS", coords), ("BOX", box), ("MASK_INPUT", mask)):
            if value is not None and not np.all(np.isfinite(value)):
                raise RequestFailed(f"{name} contains NaN or infinite values")
        if coords is not None:
            if coords.ndim != 2 or coords.shape[1] != 2 or labels.shape != (coords.shape[0],):
                raise RequestFailed(f"POINT_COORDS must be (N, 2) and POINT_LABELS (N,); got {coords.shape}, "
                                    f"{labels.shape}")
            if not np.isin(labels, (0, 1)).all():
                raise RequestFailed("POINT_LABELS must be 1 (foreground) or 0 (background)")
            if np.any((coords < 0) | (coords > np.array([w, h]))):
                raise RequestFailed(f"POINT_COORDS outside the {w}x{h} image")
            prompt["coords"] = self.transform.apply_coords(coords.astype(np.float64), (h, w)).astype(np.float32)
            prompt["labels"] = labels.astype(np.float32)
        if box is not None:
            if np.any((box.reshape(2, 2) < 0) | (box.reshape(2, 2) > np.array([w, h]))):
                raise RequestFailed(f"BOX outside the {w}x{h} image")
            prompt["box"] = self.transform.apply_boxes(box.astype(np.float64), (h, w)).reshape(4).astype(np.float32)
        if mask is not None:
            prompt["mask"] = mask.astype(np.float32)
        prompt["key"] = (None if coords is None else coords.shape[0], box is not None, mask is not None,
                         prompt["multimask"])
        return prompt

    # ---- the graph models, through BLS -------------------------------------
    def _call(self, model, inputs, outputs):
        response = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        ).exec()
        if response.has_error():
            raise RequestFailed(f"{model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def _embed(self, image):
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        batch = resized.transpose(2, 0, 1)[None].astype(np.float32)
        pixels = OnnxRuntimeBackend.preprocess(self._frame, batch)
        (embedding,) = self._call(self.encoder_model, {"image": pixels}, ["image_embeddings"])
        return CachedEmbedding(np.ascontiguousarray(embedding, np.float32), tuple(image.shape[:2]),
                               tuple(resized.shape[:2]))

    def _decode(self, entry, prompts):
        stack = lambda key: None if prompts[0][key] is None else np.stack([p[key] for p in prompts])  # noqa: E731
        feed = decoder_prompt_feed(stack("coords"), stack("labels"), stack("box"), stack("mask"),
                                   self.mask_input_size)
        feed["image_embeddings"] = entry.embedding
        scores, low_res = self._call(self.decoder_model, feed, ["iou_predictions", "low_res_masks"])
        chosen = slice(1, None) if prompts[0]["multimask"] else slice(0, 1)
        scores, low_res = scores[:, chosen], np.ascontiguousarray(low_res[:, chosen])
        masks, _, _ = postprocess.upsample_threshold_stability(low_res, entry.input_size, entry.original_size, 0.0,
                                                               frame_size=self.image_size)
        return [(masks[i], scores[i], low_res[i]) for i in range(len(prompts))]

    def _response(self, image_id, masks, scores, low_res):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("RESOLVED_IMAGE_ID", np.array([[image_id.encode("utf-8")]], dtype=object)),
            pb_utils.Tensor("MASKS", np.asarray(masks, bool)[None]),
            pb_utils.Tensor("SCORES", np.asarray(scores, np.float32)[None]),
            pb_utils.Tensor("LOW_RES_LOGITS", np.asarray(low_res, np.float32)[None]),
        ])

    def finalize(self):
        self.cache = None
