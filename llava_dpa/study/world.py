"""The study's synthetic world: scenes of one to three objects, their images, captions, questions and the
text-only task, written as the files LLaVA's data path and eval scripts read.

A scene is a 2x2 grid of cells, one to three of them holding an object with a colour, a shape and a size;
an image draws it (PIL) at `image_size` pixels. Everything is drawn from a seeded generator, so a world is
a function of its `WorldSpec`.

Splits (every image is written once, to `images/`):
- `vit`: the images the ViT is pretrained on (attribute classification, study/parts.py), with their labels;
- `stage1`: captions (alignment), `stage2`: instructions (multi-turn, some two-image samples);
- `test_iid`: new scenes of the training distribution; `test_comp`: scenes holding an object of a held-out
  colour-shape combination (`HELD_OUT`), which no training image of any split contains.
A test scene never has the layout (objects, attributes, cells) of any training scene, so a test image is
never a training image up to the pixel jitter; `check_disjoint` asserts it.

The text-only task (the target's text ability, the reference for forgetting) is knowledge the LMs learn in
pretraining: 32 capitals, asked both ways ("What is the capital of Peru?" -> "Lima", "Which country has the
capital Lima?" -> "Peru"). The test asks all 64, as Table 1's text benchmarks ask the LLM what it learnt in
pretraining; none of it is in the multimodal data, so what the target still answers after multimodal
training is what it did not forget.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (60, 100, 240), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
CELLS = ("top left", "top right", "bottom left", "bottom right")   # row-major over the 2x2 grid
#: colour-shape combinations no training image holds (one per shape, one per colour but yellow): the
#: compositional split asks about them
HELD_OUT = (("red", "triangle"), ("green", "circle"), ("blue", "square"))
QUESTION_TYPES = ("color", "shape", "count", "exist", "spatial")

NUMBER_WORDS = ("zero", "one", "two", "three")
CAPITALS = (("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("China", "Beijing"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
            ("Cuba", "Havana"), ("Greece", "Athens"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
            ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Portugal", "Lisbon"), ("Russia", "Moscow"), ("India", "Delhi"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
            ("Turkey", "Ankara"), ("Canada", "Ottawa"), ("Brazil", "Brasilia"), ("Australia", "Canberra"),
            ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Korea", "Seoul"), ("Hungary", "Budapest"),
            ("Denmark", "Copenhagen"))
TEXT_TYPES = ("capital", "country")


@dataclass(frozen=True)
class WorldSpec:
    """The world's sizes. Defaults: the default study (docs/study.md says why each is what it is)."""
    image_size: int = 32
    vit_images: int = 3000
    stage1_images: int = 800
    stage2_images: int = 1200
    test_per_type: int = 60          # questions per type and test split (5 types: 300 per split)
    two_image_every: int = 10        # one stage-2 sample in this many holds two images
    min_turns: int = 1               # questions per stage-2 conversation about one image
    max_turns: int = 3
    seed: int = 1234                 # the world's own seed: the same world for every arm and training seed


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    cell: int

    @property
    def row(self) -> int:
        return self.cell // 2

    @property
    def col(self) -> int:
        return self.cell % 2


@dataclass
class Scene:
    objects: list[Obj]
    background: int                     # grey level
    jitter: list[tuple[int, int]] = field(default_factory=list)

    def key(self) -> tuple:
        """The layout, pixel jitter and background left out: two scenes with one key are one picture."""
        return tuple(sorted((o.cell, o.color, o.shape, o.size) for o in self.objects))


# ---- scenes ---------------------------------------------------------------------------------------------------
def allowed_combos(held_out: bool) -> list[tuple[str, str]]:
    combos = [(c, s) for c in COLORS for s in SHAPES]
    return [x for x in combos if (x in HELD_OUT) == held_out]


def random_scene(rng: random.Random, *, with_held_out: bool = False, count: int | None = None) -> Scene:
    """1-3 objects in distinct cells; training combinations only, or (with_held_out) at least one held-out one."""
    count = count or rng.randint(1, 3)
    cells = rng.sample(range(4), count)
    train = allowed_combos(False)
    objects = []
    for i, cell in enumerate(cells):
        color, shape = rng.choice(allowed_combos(True) if with_held_out and i == 0 else train)
        objects.append(Obj(color, shape, rng.choice(SIZES), cell))
    objects.sort(key=lambda o: o.cell)
    return Scene(objects, rng.randint(30, 90), [(rng.randint(-1, 1), rng.randint(-1, 1)) for _ in objects])


def draw(scene: Scene, size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (scene.background,) * 3)
    d = ImageDraw.Draw(image)
    cell = size // 2
    for obj, (dx, dy) in zip(scene.objects, scene.jitter or [(0, 0)] * len(scene.objects)):
        extent = round(cell * (0.45 if obj.size == "small" else 0.8))
        x0 = obj.col * cell + (cell - extent) // 2 + dx
        y0 = obj.row * cell + (cell - extent) // 2 + dy
        box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            d.ellipse(box, fill=fill)
        elif obj.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


def caption(scene: Scene) -> str:
    n = len(scene.objects)
    parts = [f"a {o.size} {o.color} {o.shape} at the {CELLS[o.cell]}" for o in scene.objects]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"There {'is one object' if n == 1 else f'are {NUMBER_WORDS[n]} objects'}: {listed}."


# ---- questions ------------------------------------------------------------------------------------------------
def _unique(scene: Scene, attr: str, value: str) -> bool:
    return sum(getattr(o, attr) == value for o in scene.objects) == 1


def refer(scene: Scene, obj: Obj) -> str | None:
    """A phrase that picks `obj` out of the scene, or None."""
    if _unique(scene, "shape", obj.shape):
        return f"the {obj.shape}"
    if _unique(scene, "color", obj.color):
        return f"the {obj.color} object"
    if sum((o.color, o.shape) == (obj.color, obj.shape) for o in scene.objects) == 1:
        return f"the {obj.color} {obj.shape}"
    return None


def question(scene: Scene, kind: str, rng: random.Random, *, focus: Obj | None = None,
             want: str | None = None) -> tuple[str, str] | None:
    """(question, answer) of `kind` about the scene, or None when the scene cannot ask it. `focus`: the object
    the question is about (the compositional split's held-out object); `want`: the yes/no answer to aim for."""
    objects = [focus] if focus is not None else list(scene.objects)
    rng.shuffle(objects)
    if kind == "color":
        for o in objects:
            if _unique(scene, "shape", o.shape):
                return f"What color is the {o.shape}?", o.color
        return None
    if kind == "shape":
        for o in objects:
            if _unique(scene, "color", o.color):
                return f"What shape is the {o.color} object?", o.shape
        return None
    if kind == "count":
        return "How many objects are there?", NUMBER_WORDS[len(scene.objects)]
    if kind == "exist":
        want = want or rng.choice(("yes", "no"))
        present = {(o.color, o.shape) for o in scene.objects}
        if want == "yes":
            o = objects[0]
            return f"Is there a {o.color} {o.shape}?", "yes"
        pool = [c for c in allowed_combos(focus is not None) if c not in present]
        color, shape = rng.choice(pool)
        return f"Is there a {color} {shape}?", "no"
    if kind == "spatial":
        pairs = [(a, b) for a in objects for b in scene.objects
                 if a is not b and refer(scene, a) is not None and refer(scene, b) is not None]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        answer = want or rng.choice(("yes", "no"))
        # objects sit in distinct cells: they differ in column (left of) or, in one column, in row (above)
        relation, before = ("to the left of", a.col < b.col) if a.col != b.col else ("above", a.row < b.row)
        first, second = (a, b) if before == (answer == "yes") else (b, a)
        return f"Is {refer(scene, first)} {relation} {refer(scene, second)}?", answer
    raise ValueError(f"unknown question type {kind!r}; the types are {QUESTION_TYPES}")


# ---- the text-only task ---------------------------------------------------------------------------------------
def capital_question(country: str, city: str, kind: str) -> tuple[str, str]:
    if kind == "capital":
        return f"What is the capital of {country}?", city
    return f"Which country has the capital {city}?", country


def text_questions() -> list[dict]:
    """The text test: every fact the LMs learn, in the form they learn it."""
    return [{"question_id": f"text-{kind}-{i}", "text": capital_question(country, city, kind)[0],
             "answer": capital_question(country, city, kind)[1], "type": "short", "question_type": kind,
             "split": "text"} for kind in TEXT_TYPES for i, (country, city) in enumerate(CAPITALS)]


def scene_text_question(rng: random.Random) -> tuple[str, str]:
    """A visual question asked about a scene described in words (the LMs' world knowledge, never an image)."""
    while True:
        scene = random_scene(rng)
        asked = question(scene, rng.choice(QUESTION_TYPES), rng)
        if asked:
            return f"{caption(scene)} {asked[0]}", asked[1]


def lm_sample(rng: random.Random) -> dict:
    """One language-model pretraining sample: a scene described in words (plain text), or chat turns: a
    question about a described scene, or a capital (the text-only task)."""
    r = rng.random()
    if r < 0.2:
        return {"text": caption(random_scene(rng))}
    if r < 0.5:
        prompt, answer = scene_text_question(rng)
    else:
        prompt, answer = capital_question(*rng.choice(CAPITALS), rng.choice(TEXT_TYPES))
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


# ---- writing a world ------------------------------------------------------------------------------------------
def _conversation(scene: Scene, rng: random.Random, turns: int) -> list[dict]:
    kinds = rng.sample(QUESTION_TYPES, len(QUESTION_TYPES))
    out = []
    for kind in kinds:
        asked = question(scene, kind, rng)
        if asked is None:
            continue
        out += [{"from": "human", "value": ("<image>\n" if not out else "") + asked[0]},
                {"from": "gpt", "value": asked[1]}]
        if len(out) == 2 * turns:
            break
    return out


def _test_questions(rng: random.Random, split: str, per_type: int, used: set, prefix: str) -> list[tuple[Scene, dict]]:
    """`per_type` questions of each type, one per new scene; yes/no answers alternate so they are balanced."""
    out = []
    for kind in QUESTION_TYPES:
        made = 0
        while made < per_type:
            comp = split == "test_comp"
            scene = random_scene(rng, with_held_out=comp)
            if scene.key() in used:
                continue
            want = ("yes", "no")[made % 2] if kind in ("exist", "spatial") else None
            asked = question(scene, kind, rng, focus=scene_focus(scene) if comp else None, want=want)
            if asked is None or (want is not None and asked[1] != want):
                continue
            used.add(scene.key())
            out.append((scene, {"question_id": f"{split}-{kind}-{made}", "text": asked[0], "answer": asked[1],
                                "type": "short", "question_type": kind, "split": split}))
            made += 1
    return out


def scene_focus(scene: Scene) -> Obj:
    return next(o for o in scene.objects if (o.color, o.shape) in HELD_OUT)


def write_world(folder: str | Path, spec: WorldSpec = WorldSpec()) -> dict:
    """Write the world under `folder`; returns its manifest (paths and counts). Reused when complete."""
    root = Path(folder)
    manifest_path = root / "world.json"
    if manifest_path.is_file():
        found = json.loads(manifest_path.read_text())
        if found.get("spec") == asdict(spec):
            return found
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)

    # the test scenes first, so that no training scene may share a layout with one
    used: set = set()
    tests = {split: _test_questions(rng, split, spec.test_per_type, used, split) for split in ("test_iid", "test_comp")}
    test_keys = set(used)

    def training_scenes(n):
        out = []
        while len(out) < n:
            scene = random_scene(rng)
            if scene.key() not in test_keys:
                out.append(scene)
        return out

    files = {}

    def save(scene: Scene, name: str) -> str:
        draw(scene, spec.image_size).save(images / name)
        return name

    vit_rows = [{"image": save(s, f"vit_{i:05d}.png"), "objects": [asdict(o) for o in s.objects]}
                for i, s in enumerate(training_scenes(spec.vit_images))]
    stage1 = [{"id": f"cap-{i}", "image": save(s, f"s1_{i:05d}.png"),
               "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                 {"from": "gpt", "value": caption(s)}]}
              for i, s in enumerate(training_scenes(spec.stage1_images))]
    stage2_scenes = training_scenes(spec.stage2_images)
    names = [save(s, f"s2_{i:05d}.png") for i, s in enumerate(stage2_scenes)]
    stage2 = []
    for i, s in enumerate(stage2_scenes):
        if spec.two_image_every and i % spec.two_image_every == spec.two_image_every - 1:
            j = (i + 1) % len(stage2_scenes)
            same = "yes" if len(s.objects) == len(stage2_scenes[j].objects) else "no"
            stage2.append({"id": f"pair-{i}", "image": [names[i], names[j]], "conversations": [
                {"from": "human", "value": "<image>\n<image>\nDo the two images have the same number of objects?"},
                {"from": "gpt", "value": same}]})
        else:
            stage2.append({"id": f"inst-{i}", "image": names[i], "conversations": _conversation(s, rng, rng.randint(spec.min_turns, spec.max_turns))})

    for split, rows in tests.items():
        questions = []
        for k, (scene, q) in enumerate(rows):
            questions.append({**q, "image": save(scene, f"{split}_{k:04d}.png")})
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(q) + "\n" for q in questions))

    text = text_questions()
    files["text"] = root / "text.jsonl"
    files["text"].write_text("".join(json.dumps(q) + "\n" for q in text))
    for name, rows in (("vit", vit_rows), ("stage1", stage1), ("stage2", stage2)):
        files[name] = root / f"{name}.json"
        files[name].write_text(json.dumps(rows, indent=0))
    manifest = {"spec": asdict(spec), "images": str(images), **{k: str(v) for k, v in files.items()},
                "counts": {"vit": len(vit_rows), "stage1": len(stage1), "stage2": len(stage2),
                           "stage2_two_image": sum(isinstance(r["image"], list) for r in stage2),
                           "stage2_turns": sum(len(r["conversations"]) // 2 for r in stage2),
                           **{k: len(v) for k, v in tests.items()}, "text": len(text)}}
    check_disjoint(manifest)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def _training_keys(manifest: dict) -> tuple[set, set]:
    """(layouts of every training image, colour-shape pairs of every training image)."""
    keys, combos = set(), set()
    for row in json.loads(Path(manifest["vit"]).read_text()):
        objs = row["objects"]
        keys.add(tuple(sorted((o["cell"], o["color"], o["shape"], o["size"]) for o in objs)))
        combos |= {(o["color"], o["shape"]) for o in objs}
    return keys, combos


def check_disjoint(manifest: dict) -> None:
    """No test image is a training image, and no training image of any split holds a held-out combination
    (checked from the captions and the ViT labels, not from how they were drawn)."""
    _, combos = _training_keys(manifest)
    for name in ("stage1",):
        for row in json.loads(Path(manifest[name]).read_text()):
            text = row["conversations"][1]["value"]
            combos |= {(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" in text}
    bad = combos & set(HELD_OUT)
    if bad:
        raise AssertionError(f"held-out combinations {sorted(bad)} appear in training images")
    train_images = {r["image"] for r in json.loads(Path(manifest["vit"]).read_text())}
    for name in ("stage1", "stage2"):
        for row in json.loads(Path(manifest[name]).read_text()):
            train_images |= set(row["image"] if isinstance(row["image"], list) else [row["image"]])
    for split in ("test_iid", "test_comp"):
        for line in Path(manifest[split]).read_text().splitlines():
            if json.loads(line)["image"] in train_images:
                raise AssertionError(f"test image {json.loads(line)['image']} is also a training image")


def chance(questions: list[dict]) -> dict:
    """The accuracy of always giving each question type's most frequent answer (per type, and over the set):
    what a model that learnt the answer format but not the images scores."""
    by_type: dict[str, list[str]] = {}
    for q in questions:
        by_type.setdefault(q["question_type"], []).append(q["answer"])
    per_type = {k: max(v.count(a) for a in set(v)) / len(v) for k, v in by_type.items()}
    overall = sum(max(v.count(a) for a in set(v)) for v in by_type.values()) / len(questions)
    return {"per_type": per_type, "overall": overall}
