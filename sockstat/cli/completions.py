"""`sockstat completions SHELL [--install]`: print or install a shell completion script.

The script is generated from the command line (sockstat.completions), so an installed
sockstat (pip, pipx) completes its own options without the repository's completions/.
`--install` writes it where each shell looks for user completions:

  bash  ${XDG_DATA_HOME:-~/.local/share}/bash-completion/completions/sockstat
        (loaded on first <Tab> by the bash-completion package)
  zsh   ${XDG_DATA_HOME:-~/.local/share}/zsh/site-functions/_sockstat
        (zsh has no per-user default: that directory must be on $fpath before compinit)
  fish  ${XDG_CONFIG_HOME:-~/.config}/fish/completions/sockstat.fish (autoloaded)
"""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from sockstat.cli import options as opt
from sockstat.status import ExitStatus

EPILOG = opt.examples(
    ("sockstat completions bash --install", "bash: loaded on the next Tab"),
    ("sockstat completions zsh --install", "zsh: then add it to fpath"),
    ("sockstat completions fish --install", "fish: autoloaded"),
    ("sockstat completions bash > sockstat.bash", "print the script"),
    ("source <(sockstat completions bash)", "this bash session only"),
)


class Shell(enum.StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(completions)


def completions(
    shell: Annotated[Shell, typer.Argument(help="The shell: bash, zsh or fish.", metavar="SHELL",
                                           show_default=False)],
    install: Annotated[bool, typer.Option(
        "--install",
        help="Write the script to the shell's user completion directory instead of "
             "printing it (bash: ~/.local/share/bash-completion/completions, zsh: "
             "~/.local/share/zsh/site-functions, fish: ~/.config/fish/completions).")] = False,
) -> int:
    """Shell completion: print the script for bash, zsh or fish, or --install it.

    Completes commands, options, TCP states (`--state ti<Tab>`), demo names and explain
    topics. Without --install the script goes to stdout; with it, to the directory the
    shell loads user completions from (XDG_DATA_HOME and XDG_CONFIG_HOME honoured).
    """
    from sockstat import completions as generator

    script = generator.generate(shell.value)
    if not install:
        sys.stdout.write(script)
        return ExitStatus.OK
    path = install_path(shell.value)
    from sockstat.errors import SockstatError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script, encoding="utf-8")
    except OSError as exc:
        raise SockstatError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"sockstat: wrote {path}", file=sys.stderr)
    from sockstat.cli.errors import say_note

    say_note(INSTALL_HINTS[shell.value].format(dir=path.parent))
    return ExitStatus.OK


INSTALL_HINTS = {
    "bash": "new bash shells load it on the first <Tab> (needs the bash-completion "
            "package)",
    "zsh": "add `fpath=({dir} $fpath)` to ~/.zshrc before `compinit`, then start a new "
           "shell",
    "fish": "new fish shells load it on the first <Tab>",
}


def install_path(shell: str, env: dict[str, str] | None = None) -> Path:
    """Where --install writes the script for `shell` (XDG base directories honoured,
    a relative one ignored as the spec says)."""
    env = os.environ if env is None else env
    data = _xdg(env, "XDG_DATA_HOME")
    config = _xdg(env, "XDG_CONFIG_HOME")
    if shell in ("bash", "zsh"):
        data = data or _home(env) / ".local" / "share"
        if shell == "bash":
            return data / "bash-completion" / "completions" / "sockstat"
        return data / "zsh" / "site-functions" / "_sockstat"
    return (config or _home(env) / ".config") / "fish" / "completions" / "sockstat.fish"


def _xdg(env, name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value and os.path.isabs(value) else None


def _home(env) -> Path:
    """The user's home: $HOME (an empty one is unset: the passwd entry's), which must be
    an existing directory named by an absolute path. --install makes the directories
    in it, never the home itself (HOME=/nonexistent is how system users say they have
    none), nor anything relative to the working directory."""
    from sockstat.errors import SockstatError

    home = env.get("HOME")
    if not home:
        import pwd

        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            raise SockstatError("no HOME and no home in the user database: set HOME "
                                "(or XDG_DATA_HOME, XDG_CONFIG_HOME)") from None
    if not os.path.isabs(home):
        raise SockstatError(f"HOME is not an absolute path ({home!r}): nowhere to install")
    if not os.path.isdir(home):
        raise SockstatError(f"the home directory {home} (HOME) does not exist: nowhere to "
                            "install (set HOME, or XDG_DATA_HOME, XDG_CONFIG_HOME)")
    return Path(home)
