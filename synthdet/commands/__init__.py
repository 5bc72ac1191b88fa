"""The `synthdet` commands, one module per thing they are about.

Each module defines plain typer command functions and a `register(app)` that
adds them to the application; `synthdet.cli` lists the modules in help order.
Shared options and helpers (`fail`, `print_qr`, the console) live in
`synthdet.commands.common`.
"""
