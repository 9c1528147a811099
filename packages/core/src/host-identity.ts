/** Who this host is, as the connector and the hosts table name it. */
export interface HostIdentity {
  hostname: string;
  ips: string[];
  platform: string;
  osType: string;
}
