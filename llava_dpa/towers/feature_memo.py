"""The inference memo: a tower's features per image content, tower inputs and weights.

A chat re-sends its image with every turn (LLaVA's CLI, model worker and web UI all do); the memo makes a
conversation encode it once. Each tower holds one, sized by `TowerOptions.memo_size` (0: no memo), and uses it
only where its caller runs without autograd: a stored tensor must never meet a graph that would save it for
backward. A bench that must encode on every call clears it (`towers.base.clear_feature_memos`); nothing switches it off.
"""
from __future__ import annotations

import hashlib
import threading

import torch


class FeatureMemo:
    def __init__(self, size: int):
        self.size = size
        self.computations = 0  # how many encodings the memo could not serve (tests read it)
        self._entries: dict = {}
        self._lock = threading.Lock()

    # A tower is deep-copied and pickled with its modules (DeepSpeed, PEFT, spawn): the memo travels empty.
    def __getstate__(self):
        return {"size": self.size, "computations": 0}

    def __setstate__(self, state):
        self.__init__(state["size"])

    def __deepcopy__(self, memo):
        return FeatureMemo(self.size)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def features(self, encode, images, tower_inputs: dict, parameters, device, dtype):
        """`encode(images, **tower_inputs)`, or its stored result for the same images, inputs and weights."""
        if not self.size:
            return encode(images, **tower_inputs)
        key = self.key(images, tower_inputs, parameters, device, dtype)
        # The lock guards reads and writes, so concurrent requests of a model worker never race on eviction. The
        # encoding runs outside it: requests encode in parallel, and two that miss the same image may both encode.
        with self._lock:
            if key in self._entries:
                return self._entries[key]
        features = encode(images, **tower_inputs)
        with self._lock:
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = features
            self.computations += 1
        return features

    @staticmethod
    def key(images, tower_inputs: dict, parameters, device, dtype) -> tuple:
        digest = hashlib.sha1()
        for image in (images if isinstance(images, (list, tuple)) else [images]):
            digest.update(str((tuple(image.shape), image.dtype)).encode())
            digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        weights = sum(p._version for p in parameters)  # bumped by every in-place update (training, loading)
        return digest.hexdigest(), repr(tower_inputs), weights, device, dtype, torch.is_inference_mode_enabled()

