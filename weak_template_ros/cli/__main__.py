from weak_template_ros.cli import main

if __name__ == "__main__":
    main()
