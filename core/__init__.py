"""The bottom layer: settings, logging, the outbound address guard, ids, timer states, the
schedule math and the window math. Plain Python that db/, api/, dispatcher/ and cli/ all use;
no SQL, no I/O (import-linter keeps it so).
"""
