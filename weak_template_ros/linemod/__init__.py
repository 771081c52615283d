"""linemod"""
