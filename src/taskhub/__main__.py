from taskhub.cli import main

main()
