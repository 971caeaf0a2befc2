# The README's two commands: `make demo` (set up, then run the main job) and `make test` (set up, then test).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
DEMO_DIR ?= build/demo
PYTEST_ARGS ?= -n 2

.PHONY: setup test test-fast demo demo-model clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is a local CPU wheel; any other torch request would pull a multi-GB CUDA build.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ros]'
	touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) -m "not slow"

demo: setup
	$(VENV)/bin/mobilevlm-agent demo --model demo --planner model --seed 7 --question "Describe the scene." --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) build *.egg-info

# The bundled demo model, from scratch: simulator data -> tokenizer -> stages 0, 1, vision, 2a, 2b -> one DAgger round (two runs on its mix)
# -> a second DAgger round in the same rooms, driven by the DAgger-1 model, plus questions from 360 more rooms (2000 steps,
# then 4000 more at a lower learning rate) -> questions from another 360 rooms added to that mix (4000 steps) -> the
# vision stage again, from those weights, on the views of all 840 rooms (6000 steps) -> 4000 steps of 2b on it -> the
# vision stage once more at 224 px instead of 168 (position table resampled; 64 visual tokens instead of 36) -> 4000
# steps of 2b on it -> the vision stage again at 280 px (100 visual tokens; 4000 steps) -> 4000 steps of 2b on it -> eval.
# The second `sim questions` rewrites data/balanced_questions.json (its own --base) as the larger mix, so a rerun of the
# two runs before it alone must rerun the first `sim questions` too.
DM := build/demo-model
MVA := $(VENV)/bin/mobilevlm-agent
SCENES ?= 120
demo-model: setup
	$(MVA) sim dataset --out $(DM)/data --scenes $(SCENES) --seed 0 --views 16 --episodes 3
	$(MVA) data train-tokenizer $(DM)/data/corpus.txt $(DM)/data/llava.json $(DM)/data/sharegpt.json --out $(DM)/tokenizer.model --vocab-size 1024
	$(MVA) data tokenize $(DM)/data/corpus.txt --tokenizer $(DM)/tokenizer.model --out $(DM)/tokens
	$(MVA) train demo-stage0 --out $(DM)/s0 --set data.path=$(DM)/tokens --set tokenizer=$(DM)/tokenizer.model
	$(MVA) train demo-stage1 --out $(DM)/s1 --set model=$(DM)/s0/model --set data.path=$(DM)/data/sharegpt.json
	$(MVA) train demo-stagev --out $(DM)/sv --set tokenizer=$(DM)/tokenizer.model --set data.path=$(DM)/data/labels.json
	$(MVA) train demo-stage2a --out $(DM)/s2a --set model=demo-vlm --set tokenizer=$(DM)/tokenizer.model --set "init_from={llm: $(DM)/s1/model, vision: $(DM)/sv/model, projector: $(DM)/sv/model}" --set data.path=$(DM)/data/captions.json
	$(MVA) train demo-stage2b --out $(DM)/s2b --set model=$(DM)/s2a/model --set data.path=$(DM)/data/balanced.json
	$(MVA) sim dagger --model $(DM)/s2b/model --data $(DM)/data --seed 1 --scenes 40 --episodes 3
	$(MVA) train demo-stage2b --out $(DM)/dagger1 --set model=$(DM)/s2b/model --set data.path=$(DM)/data/balanced_dagger1.json --set optim.lr=5e-4 --set optim.warmup_steps=20 --set max_steps=1200 --set save_every=300
	$(MVA) train demo-stage2b --out $(DM)/dagger1b --set model=$(DM)/dagger1/model --set data.path=$(DM)/data/balanced_dagger1.json --set optim.lr=5e-4 --set optim.warmup_steps=20 --set max_steps=2400 --set save_every=600
	$(MVA) sim dagger --model $(DM)/dagger1b/model --data $(DM)/data --seed 1 --scenes 40 --episodes 3
	$(MVA) sim dataset --out $(DM)/qa --scenes 360 --seed 4 --views 16 --episodes 0
	$(MVA) sim questions --data $(DM)/data --source $(DM)/qa --base balanced_dagger1.json --pope-per-answer 4000
	$(MVA) train demo-stage2b --out $(DM)/questions --set model=$(DM)/dagger1b/model --set data.path=$(DM)/data/balanced_questions.json --set optim.lr=5e-4 --set optim.warmup_steps=20 --set max_steps=2000 --set save_every=500
	$(MVA) train demo-stage2b --out $(DM)/questions2 --set model=$(DM)/questions/model --set data.path=$(DM)/data/balanced_questions.json --set optim.lr=3e-4 --set optim.warmup_steps=20 --set max_steps=4000 --set save_every=1000
	$(MVA) sim dataset --out $(DM)/qa5 --scenes 360 --seed 5 --views 16 --episodes 0
	$(MVA) sim questions --data $(DM)/data --source $(DM)/qa5 --base balanced_questions.json --pope-per-answer 4000
	$(MVA) train demo-stage2b --out $(DM)/rooms720 --set model=$(DM)/questions2/model --set data.path=$(DM)/data/balanced_questions.json --set optim.lr=3e-4 --set optim.warmup_steps=20 --set max_steps=4000 --set save_every=1000
	$(MVA) sim labels $(DM)/data $(DM)/qa $(DM)/qa5 --out $(DM)/labels_rooms.json
	$(MVA) train demo-stagev --out $(DM)/sv2 --set model=$(DM)/rooms720/model --set data.path=$(DM)/labels_rooms.json --set optim.lr=1e-3 --set optim.warmup_steps=100
	$(MVA) train demo-stage2b --out $(DM)/vision2 --set model=$(DM)/sv2/model --set data.path=$(DM)/data/balanced_questions.json --set optim.lr=3e-4 --set optim.warmup_steps=20 --set max_steps=4000 --set save_every=1000
	$(MVA) train demo-stagev --out $(DM)/sv224 --set model=$(DM)/vision2/model --set data.path=$(DM)/labels_rooms.json --set optim.lr=1e-3 --set optim.warmup_steps=100 --set image_size=224 --set data.cache_mb=4096
	$(MVA) train demo-stage2b --out $(DM)/res224 --set model=$(DM)/sv224/model --set data.path=$(DM)/data/balanced_questions.json --set optim.lr=3e-4 --set optim.warmup_steps=20 --set max_steps=4000 --set save_every=1000 --set data.cache_mb=4096
	$(MVA) train demo-stagev --out $(DM)/sv280 --set model=$(DM)/res224/model --set data.path=$(DM)/labels_rooms.json --set optim.lr=1e-3 --set optim.warmup_steps=100 --set image_size=280 --set max_steps=4000 --set save_every=1000 --set data.cache_mb=6144
	$(MVA) train demo-stage2b --out $(DM)/res280 --set model=$(DM)/sv280/model --set data.path=$(DM)/data/balanced_questions.json --set optim.lr=3e-4 --set optim.warmup_steps=20 --set max_steps=4000 --set save_every=1000 --set data.cache_mb=6144
	for s in s0 s1 sv s2a s2b dagger1 dagger1b questions questions2 rooms720 sv2 vision2 sv224 res224 sv280 res280; do $(MVA) plot $(DM)/$$s; done
	mkdir -p models/demo && cp $(DM)/res280/model/config.json $(DM)/res280/model/model.safetensors $(DM)/res280/model/tokenizer.model models/demo/
	$(MVA) plot $(DM)/s0 $(DM)/s1 $(DM)/sv $(DM)/s2a $(DM)/s2b $(DM)/dagger1 $(DM)/dagger1b $(DM)/questions $(DM)/questions2 $(DM)/rooms720 $(DM)/sv2 $(DM)/vision2 $(DM)/sv224 $(DM)/res224 $(DM)/sv280 $(DM)/res280 --out models/demo/training_curves.png
	$(MVA) eval sim --model models/demo --episodes 20 --seed 7 --json > models/demo/eval.json
	$(PY) -c "import json; from mobilevlm_agent.eval.sim_eval import format_table; print(format_table(json.load(open('models/demo/eval.json'))))" | tee $(DM)/eval.txt
