"""The parts of stage=synthesize that need no generator: the plan, the templates, the logs, the
transcript parser and the bible check."""

from __future__ import annotations

from collections import Counter

from omegaconf import OmegaConf

from conftest import REPO
from recipe_runner.config.schema import RunConfig
from recipe_runner.data.bible import load_bible
from recipe_runner.synthesize.checks import Checks
from recipe_runner.synthesize.prompts import Prompts, fill, template_problems
from recipe_runner.synthesize.situations import plan
from recipe_runner.synthesize.store import Log
from recipe_runner.synthesize.transcript import clean_turn, first_sentences, parse_transcript, speaker_names

BIBLE = load_bible(str(REPO / "data/alex/bible.yaml"))
PROMPTS = OmegaConf.load(REPO / "conf/synth/prompts/default.yaml")


def synth(**over):
    cfg = OmegaConf.structured(RunConfig).synth
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def test_the_plan_spreads_topics_evenly_and_grows_without_changing():
    topics = [f"t{i}" for i in range(12)]
    forty = plan(synth(synopses=40, **{"situations.topics": topics}), BIBLE)
    counts = Counter(s.topic for s in forty)
    assert set(counts) == set(topics) and set(counts.values()) == {3, 4}  # 40 over 12: every topic 3-4 times
    assert sum(s.bait is not None for s in forty) == 8  # bait_share 0.2, evenly spaced
    turns = [t for s in forty for t in s.turns]
    assert turns.count(8) == 16 and len(turns) == 80  # long_share 0.2 of 80 dialogues
    eighty = plan(synth(synopses=80, **{"situations.topics": topics}), BIBLE)
    assert eighty[:40] == forty  # raising synth.synopses extends the plan; a rerun continues it
    assert plan(synth(synopses=40, seed=1, **{"situations.topics": topics}), BIBLE) != forty


def test_templates_are_filled_with_text_and_nothing_is_evaluated():
    assert fill("{name} says {x.__class__} {{name}}", {"name": "Alex"}) == "Alex says {x.__class__} {Alex}"
    bad = OmegaConf.merge(PROMPTS, {"persona_turn": "{system_prompt} {chat} {password}"})
    problems = template_problems(bad)
    assert len(problems) == 1 and "synth.prompts.persona_turn uses {chat}, {password}" in problems[0]
    sit = plan(synth(synopses=1), BIBLE)[0]
    p = Prompts(PROMPTS, BIBLE, "You are Alex.")
    user = p.user_turn(sit, "A dev needs help.", ["hi", "yo"])[0]["content"]
    assert "User: hi\nAlex: yo" in user and "A dev needs help." in user
    persona = p.persona_turn(sit, "A dev needs help.", ["hi", "yo", "again?"])
    assert [m["role"] for m in persona] == ["system", "user", "assistant", "user"]
    assert persona[0]["content"].startswith("You are Alex.")


def test_a_log_cut_mid_line_loses_only_that_line_and_ignores_repeats(tmp_path):
    path = tmp_path / "turns.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n{"id": "c", "x"')
    log = Log(path)
    assert list(log.rows) == ["a", "b"] and log.cut == 1
    log.add({"id": "b", "x": 99})  # already there: not written twice
    log.add({"id": "c", "x": 3})
    log.close()
    assert path.read_text() == '{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n{"id": "c", "x": 3}\n'


def test_turns_and_transcripts_are_cleaned_not_rewritten():
    names = speaker_names("Captain Rook")
    assert clean_turn('Rook: "Arr, aye."', names) == ("Arr, aye.", None)
    text, problem = clean_turn("Arr.\nUser: and then?", names)
    assert problem.startswith("speaker_label")
    messages, problem = parse_transcript("Sure! Here it is:\nUser: hi\n**Captain Rook:** Arr.\nmore\nUser: ok\nRook: aye",
                                         "Captain Rook")
    assert problem is None and [m["content"] for m in messages] == ["hi", "Arr.\nmore", "ok", "aye"]
    assert parse_transcript("no labels at all", "Captain Rook")[1].startswith("malformed")
    assert first_sentences("Arr. Aye, e.g. this. Third one! And a fourth, cut mid", 3) == "Arr. Aye, e.g. this. Third one!"
    assert first_sentences("no sentence ever ends here", 3) is None


def dialogue(*turns, asked=None, did="s0001-d1"):
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"id": did, "messages": msgs, "turns": asked or len(turns) // 2, "problems": []}


def test_each_bible_rule_rejects_with_its_reason():
    checks = Checks(synth().check, BIBLE, None)
    ok = checks.rules(dialogue("how are you", "yo, alive. It's always DNS anyway."), "en")
    assert ok.accepted and ok.scores["marker_share"] == 1.0
    cases = {
        "taboo": dialogue("hi", "Hello there, yo!"),
        "too_long": dialogue("hi", "Yo. One. Two. Three. Four."),
        "few_markers": dialogue("hi", "Fine, thanks for asking about my day today.", "and?", "Nothing more to say."),
        "assistant_voice": dialogue("hi", "Yo, as an AI I have no weekend."),
        "role_order": {"id": "x", "turns": 1, "messages": [{"role": "assistant", "content": "yo"},
                                                            {"role": "user", "content": "hi"}]},
        "turn_count": dialogue("hi", "yo, meh.", asked=3),
        "empty_turn": dialogue("", "yo, meh."),
        "language": dialogue("hi", "Yo, das ist immer das DNS, glaub mir, wirklich immer."),
    }
    for reason, d in cases.items():
        reasons = checks.rules(d, "en").reasons
        assert reason in [r.split(":")[0] for r in reasons], (reason, reasons)
