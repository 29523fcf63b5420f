/// How the server reaches devices outside a direct reply: a round's task goes to every device
/// of a cohort when the round starts. The network transport sends it down each device's
/// stream; the simulator schedules its arrival in virtual time; tests collect it.
public protocol DeviceLink: Sendable {
  func assign(_ assignment: TaskAssignment, to devices: [DeviceID]) async
  /// These devices wait for a task that will not come (a uniform cohort drew others, or the run
  /// ended): tell them to come back in `window`.
  func release(_ devices: [DeviceID], window: ClosedRange<Double>) async
  /// Uniform sampling: the round `round` can start and wants `count` more devices. A driver
  /// that knows which devices are available (the simulator) has that many of them, drawn
  /// uniformly, check in now; a network server cannot call devices and does nothing.
  func invite(round: Int, count: Int) async
}

extension DeviceLink {
  public func release(_ devices: [DeviceID], window: ClosedRange<Double>) async {}
  public func invite(round: Int, count: Int) async {}
}
