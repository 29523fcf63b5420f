import CohortCore
public import CohortProtocol

/// Holds the connections of the devices it has accepted and routes the Coordinator's messages
/// to each device's own link. The network transport connects each device's stream here; the
/// simulator connects nothing and lets every message go to its one in-memory link.
public actor Selector: DeviceLink {
  private var links: [DeviceID: any DeviceLink] = [:]
  private let fallback: (any DeviceLink)?

  /// - Parameter fallback: where messages for devices without a link of their own go.
  public init(fallback: (any DeviceLink)? = nil) {
    self.fallback = fallback
  }

  public func connect(_ device: DeviceID, link: any DeviceLink) {
    links[device] = link
  }

  /// Forgets the device's link if it is `link`; false when another link (a newer stream of the
  /// device) has replaced it, which stays.
  @discardableResult
  public func disconnect(_ device: DeviceID, link: any DeviceLink) -> Bool {
    guard let current = links[device], (current as AnyObject) === (link as AnyObject) else {
      return links[device] == nil
    }
    links.removeValueReleasingSpace(forKey: device)
    return true
  }

  public var connectedDevices: Int { links.count }

  /// Sends the assignment down each device's link; devices that are neither connected nor
  /// covered by a fallback miss their task and will count as not reporting.
  public func assign(_ assignment: TaskAssignment, to devices: [DeviceID]) async {
    var rest: [DeviceID] = []
    for device in devices {
      if let link = links[device] {
        await link.assign(assignment, to: [device])
      } else {
        rest.append(device)
      }
    }
    if let fallback, !rest.isEmpty { await fallback.assign(assignment, to: rest) }
  }

  public func release(_ devices: [DeviceID], window: ClosedRange<Double>) async {
    var rest: [DeviceID] = []
    for device in devices {
      if let link = links[device] {
        await link.release([device], window: window)
      } else {
        rest.append(device)
      }
    }
    if let fallback, !rest.isEmpty { await fallback.release(rest, window: window) }
  }

  public func invite(round: Int, count: Int) async {
    await fallback?.invite(round: round, count: count)
  }
}
