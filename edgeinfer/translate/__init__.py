"""Offline translation: ``ei.Translator`` among English, French, Spanish, German, Italian, Portuguese."""

from .languages import LANGUAGES, detect_language
from .memory import HistoryEntry, TranslationMemory
from .translator import Translation, TranslationStats, TranslationStream, Translator

__all__ = ["LANGUAGES", "HistoryEntry", "Translation", "TranslationMemory", "TranslationStats",
           "TranslationStream", "Translator", "detect_language"]
