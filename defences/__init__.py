"""Defences beyond cryptography (noise, NoPeek, dropout, query budgets).

Not built yet: they arrive with issue 6. The package exists so the layout is stable.
"""
