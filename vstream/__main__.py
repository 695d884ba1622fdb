from vstream.cli.main import main

raise SystemExit(main())
