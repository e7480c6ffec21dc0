"""The embedded AWS emulator (moto server plus fleetwarden's documented extensions) for the demo and tests.

Needs the `demo` extra (`pip install fleetwarden[demo]`); never part of the Lambda package.
"""
