"""Transcription + diarization merged into speaker turns (the earlier dashboard's shape): a new
turn on a change of speaker or after more than 1.5 s of silence."""

from __future__ import annotations

from app.proxy.speakers import Diarization, Piece, SpeakerSpan, Transcript, merge


def test_turns_split_on_speaker_change_and_long_silence() -> None:
    transcript = Transcript(
        duration=9.0, language="en",
        segments=[Piece(0.0, 1.0, " hello there"), Piece(1.2, 2.0, "how are you"),
                  Piece(4.0, 5.0, "fine thanks"), Piece(7.0, 8.0, "and you"),
                  Piece(8.1, 8.2, "  ")],
    )  # fmt: skip
    diarization = Diarization(segments=[SpeakerSpan(0.0, 2.1, "SPEAKER_00"),
                                        SpeakerSpan(3.9, 9.0, "SPEAKER_01")])  # fmt: skip
    assert merge(transcript, diarization) == {
        "duration": 9.0, "language": "en", "speakers_detected": 2,
        "segments": [
            {"start_ms": 0, "end_ms": 2000, "speaker": "SPEAKER_00",
             "text": "hello there how are you"},
            {"start_ms": 4000, "end_ms": 5000, "speaker": "SPEAKER_01", "text": "fine thanks"},
            {"start_ms": 7000, "end_ms": 8000, "speaker": "SPEAKER_01", "text": "and you"},
        ],
    }  # fmt: skip


def test_words_preferred_and_unlabelled_pieces_go_to_the_nearest_speaker() -> None:
    transcript = Transcript(
        segments=[Piece(0.0, 3.0, "ignored when words exist")],
        words=[Piece(0.0, 0.4, "yes"), Piece(0.5, 0.9, "no"), Piece(2.5, 2.8, "maybe")],
    )
    diarization = Diarization(segments=[SpeakerSpan(0.0, 0.45, "A"), SpeakerSpan(0.5, 1.0, "B")])
    out = merge(transcript, diarization)
    assert [(t["speaker"], t["text"]) for t in out["segments"]] == [
        ("A", "yes"), ("B", "no"), ("B", "maybe")
    ]  # fmt: skip
    assert out["duration"] == 2.8 and out["speakers_detected"] == 2
