from jobs.cli import SUBCOMMANDS, main


def test_dispatch_and_usage(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in SUBCOMMANDS)
    assert main([]) == 2
    assert main(["paint"]) == 2
    assert "unknown subcommand 'paint'" in capsys.readouterr().err
    assert main(["weights", "list"]) == 0


def test_help_lists_each_subcommand_on_one_line(capsys):
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, text in SUBCOMMANDS.items():
        assert f"  {name:<9} {text}" in lines


def test_version_names_the_package_and_the_code(capsys, monkeypatch):
    from importlib.metadata import version

    monkeypatch.setenv("ULTRASTYLE_CODE_VERSION", "build-42")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ultrastyle {version('ultrastyle')} (code build-42)\n"
    monkeypatch.setenv("ULTRASTYLE_CODE_VERSION", version("ultrastyle"))
    assert main(["-V"]) == 0
    assert capsys.readouterr().out == f"ultrastyle {version('ultrastyle')}\n"  # the same: said once
