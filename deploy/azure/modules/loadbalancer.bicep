// Standard public load balancer in front of the brokers: TCP rules for the
// MQTT ports, a health probe, TCP reset on idle, and (without a NAT
// gateway) an outbound rule.

param location string
param namePrefix string
param enableTls bool
param enableWebSocket bool
@description('Idle timeout of the MQTT rules in minutes; see main.bicep.')
param idleTimeoutMinutes int
@description('Give the backends outbound access through the load balancer (false when a NAT gateway does it).')
param outboundRule bool

var lbName = '${namePrefix}-lb'
var frontendId = resourceId('Microsoft.Network/loadBalancers/frontendIPConfigurations', lbName, 'frontend')
var poolId = resourceId('Microsoft.Network/loadBalancers/backendAddressPools', lbName, 'brokers')
var probeId = resourceId('Microsoft.Network/loadBalancers/probes', lbName, 'mqtt')

var ports = concat([1883], enableTls ? [8883] : [], enableWebSocket ? [8083] : [], enableWebSocket && enableTls ? [8084] : [])

resource ip 'Microsoft.Network/publicIPAddresses@2023-11-01' = {
  name: '${lbName}-ip'
  location: location
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    dnsSettings: {
      domainNameLabel: toLower('${namePrefix}-${uniqueString(resourceGroup().id)}')
    }
  }
}

resource lb 'Microsoft.Network/loadBalancers@2023-11-01' = {
  name: lbName
  location: location
  sku: {
    name: 'Standard'
  }
  properties: {
    frontendIPConfigurations: [
      {
        name: 'frontend'
        properties: {
          publicIPAddress: {
            id: ip.id
          }
        }
      }
    ]
    backendAddressPools: [
      {
        name: 'brokers'
      }
    ]
    probes: [
      {
        // The broker's /healthz on its admin listener: 200 while every
        // shard serves and ticks, 503 while starting, stuck, or from the
        // first stop signal on, so a draining broker leaves the rotation
        // before it stops accepting.
        name: 'mqtt'
        properties: {
          protocol: 'Http'
          port: 8080
          requestPath: '/healthz'
          intervalInSeconds: 5
          probeThreshold: 2
        }
      }
    ]
    loadBalancingRules: [for port in ports: {
      name: 'tcp-${port}'
      properties: {
        frontendIPConfiguration: {
          id: frontendId
        }
        backendAddressPool: {
          id: poolId
        }
        probe: {
          id: probeId
        }
        protocol: 'Tcp'
        frontendPort: port
        backendPort: port
        // Flows idle longer than this are closed; with TCP reset both ends
        // get a RST instead of a silent drop (see main.bicep).
        idleTimeoutInMinutes: idleTimeoutMinutes
        enableTcpReset: true
        enableFloatingIP: false
        loadDistribution: 'Default'
        // Outbound goes through the outbound rule or the NAT gateway.
        disableOutboundSnat: true
      }
    }]
    outboundRules: outboundRule ? [
      {
        name: 'outbound'
        properties: {
          frontendIPConfigurations: [
            {
              id: frontendId
            }
          ]
          backendAddressPool: {
            id: poolId
          }
          protocol: 'All'
          // SNAT ports per VM out of the frontend IP's 64,000. Brokers only
          // go out for packages and downloads: 512 each lets 125 VMs share
          // the IP (more instances fail to get ports: use the NAT gateway).
          allocatedOutboundPorts: 512
          enableTcpReset: true
          idleTimeoutInMinutes: 4
        }
      }
    ] : []
  }
}

output publicIp string = ip.properties.ipAddress
output fqdn string = ip.properties.dnsSettings.fqdn
output backendPoolId string = poolId
output probeId string = probeId
