from jobs.cli import SUBCOMMANDS, main


def test_dispatch_and_usage(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in SUBCOMMANDS)
    assert main([]) == 2
    assert main(["paint"]) == 2
    assert "unknown subcommand 'paint'" in capsys.readouterr().err
    assert main(["weights", "list"]) == 0
