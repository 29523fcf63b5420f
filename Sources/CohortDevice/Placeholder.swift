enum CohortDeviceModule {}
