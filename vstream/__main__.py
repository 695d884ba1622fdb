from vstream.cli import main

raise SystemExit(main())
