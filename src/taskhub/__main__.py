from taskhub.cli_entry import main

main()
