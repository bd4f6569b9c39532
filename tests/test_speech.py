"""Speech eval sets, Whisper text normalization and WER, without any model."""

import json

import numpy as np
import pytest
import soundfile as sf

from stages.core.errors import BuildError as SpeechSetError
from stages.core.metrics import english_normalizer, error_rates
from stages.core.paths import speech_set_dir
from stages.core.schema import FliteSpeech, ManifestSpeech, SphinxSpeech, TextSet
from stages.core.speech import load_audio
from stages.speechsets import build, sentences
from tests.conftest import assert_nothing_written


@pytest.mark.parametrize(
    "a, b",
    [
        ("four queen of clubs", "4 queen of clubs"),
        ("Mr. Dashwood had ten colours!", "mister dashwood had 10 colors"),
        ("It cost $20.", "it cost twenty dollars"),
        ("He was not an ill-disposed young man.", "he was not an ill disposed young man"),
    ],
)
def test_normalizer_treats_spelling_variants_as_equal(a, b):
    norm = english_normalizer()
    assert norm(a) == norm(b)


def test_wer_and_cer_match_hand_computed_values():
    # ref 6 words; hyp: 1 substitution (sat->sit), 1 deletion (the), 1 insertion (down) -> 3/6
    rates = error_rates(["the cat sat on the mat"], ["the cat sit on mat down"])
    assert rates["wer"] == pytest.approx(3 / 6)
    # corpus WER pools errors over words: (0 + 1) / (3 + 3); "ten" and "10" are the same word
    assert error_rates(["ten of clubs", "queen of hearts"], ["10 of clubs", "queen of spades"])["wer"] == pytest.approx(
        1 / 6
    )
    assert error_rates(["abc"], ["abd"])["cer"] == pytest.approx(1 / 3)


def wav(path, seconds=0.5, rate=16000):
    sf.write(str(path), (0.1 * np.sin(np.arange(int(seconds * rate)) / 10)).astype(np.float32), rate)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_manifest_set_is_resampled_to_16k_mono(workdir):
    wav(workdir / "a.wav", rate=8000)
    (workdir / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "hello"}) + "\n")
    assert build("mine", ManifestSpeech(type="manifest", path=str(workdir / "m.jsonl"))) == 1
    audio, rate = sf.read(str(speech_set_dir("mine") / "00000.wav"))
    assert rate == 16000 and audio.ndim == 1 and len(audio) == 8000


@pytest.mark.parametrize(
    "line, message",
    [
        ({"audio": "missing.wav", "text": "hello"}, "missing.wav: unreadable audio"),
        ({"audio": "a.wav", "text": "  "}, "m.jsonl:1: empty reference text for a.wav"),
        (
            {"audio": "a.wav", "text": "hi", "sampling_rate": 22050},
            "a.wav: sample rate 16000 Hz, manifest says 22050 Hz",
        ),
        ({"text": "hi"}, 'm.jsonl:1: needs an "audio" path'),
    ],
)
def test_bad_manifest_entries_name_the_file_and_write_nothing(workdir, line, message):
    wav(workdir / "a.wav")
    (workdir / "m.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(SpeechSetError, match=message.replace("$", r"\$").replace(".", r"\.")):
        build("mine", ManifestSpeech(type="manifest", path=str(workdir / "m.jsonl")))
    assert_nothing_written(workdir / "data")


def test_corrupt_audio_is_named(workdir):
    (workdir / "bad.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(SpeechSetError, match="bad.wav: unreadable audio"):
        load_audio(workdir / "bad.wav")


def test_sphinx_transcription_and_flite_synthesis(workdir):
    wav(workdir / "001.wav")
    (workdir / "t.txt").write_text("<s> ten of clubs  </s> (001)\n")
    assert build("cards", SphinxSpeech(type="sphinx", dir=str(workdir), transcription="t.txt")) == 1
    line = json.loads((speech_set_dir("cards") / "manifest.jsonl").read_text())
    assert line["text"] == "ten of clubs"
    (workdir / "text.txt").write_text("fragment here. The cat sat on the mat today. Short. The dog ran far away now.")
    spec = FliteSpeech(type="flite", count=2, min_words=4, text=TextSet(path=str(workdir / "text.txt")))
    assert build("synth", spec) == 2
    texts = [json.loads(x)["text"] for x in (speech_set_dir("synth") / "manifest.jsonl").read_text().split("\n") if x]
    assert texts == ["The cat sat on the mat today.", "The dog ran far away now."]
    assert sentences("a b c d e. F g h i j.", 5, 9) == ["F g h i j."]
