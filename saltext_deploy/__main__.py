"""
``python -m saltext_deploy <command>``: where the installed parts are, for the master's configuration.

- ``version``: the version of salt-deploy;
- ``file-roots``: the folder to add to ``file_roots`` (the node-preparation states ``deploy``);
- ``console``: the web console's folder (salt-api's ``static``); refused (exit 2) when salt-api's
  ``rest_cherrypy`` cannot run because the Python package cherrypy is missing.

A missing part is one line on stderr naming it and how to install it, and exit 2.
"""

import sys

import saltext_deploy

USAGE = "usage: python -m saltext_deploy {version,file-roots,console}"


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    command = args[0]
    if command == "version":
        import deploy_master  # pylint: disable=import-outside-toplevel

        print(deploy_master.__version__)
        return 0
    if command == "file-roots":
        path = saltext_deploy.file_roots_dir()
        if path is None:
            print("salt-deploy: the states folder (deploy/init.sls) is not installed: reinstall salt-deploy",
                  file=sys.stderr)
            return 2
        print(path)
        return 0
    if command == "console":
        try:
            import cherrypy  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
            from deploy_master import contract  # pylint: disable=import-outside-toplevel

            print(contract.missing("the web console (salt-api's rest_cherrypy)", "the Python package cherrypy",
                                   pip="cherrypy"), file=sys.stderr)
            return contract.BAD_INPUT
        path = saltext_deploy.console_dir()
        if path is None:
            print("salt-deploy: the console's files are not installed: reinstall salt-deploy", file=sys.stderr)
            return 2
        print(path)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
