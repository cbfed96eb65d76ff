// VNet with a broker subnet and a load-generator subnet, their NSGs, and
// an optional NAT gateway for outbound traffic.

param location string
param namePrefix string
@description('Source prefix allowed to the MQTT ports.')
param mqttSourcePrefix string
param enableTls bool
param enableWebSocket bool
param enableNatGateway bool
@description('The admin HTTP port (#14): denied from the Internet, always.')
param adminPort int
@description('Source prefix allowed to SSH to the load generators; empty: none.')
param sshSourcePrefix string

var natName = '${namePrefix}-nat'

var mqttRules = [
  {
    name: 'allow-mqtt'
    properties: {
      description: 'MQTT over TCP. Without a password file (passwordFile) anyone in the source range may publish and subscribe: keep it narrow.'
      priority: 100
      direction: 'Inbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: mqttSourcePrefix
      sourcePortRange: '*'
      destinationAddressPrefix: '*'
      destinationPortRange: '1883'
    }
  }
]
var tlsRules = enableTls ? [
  {
    name: 'allow-mqtts'
    properties: {
      description: 'MQTT over TLS.'
      priority: 110
      direction: 'Inbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: mqttSourcePrefix
      sourcePortRange: '*'
      destinationAddressPrefix: '*'
      destinationPortRange: '8883'
    }
  }
] : []
var wsRules = enableWebSocket ? [
  {
    name: 'allow-mqtt-websocket'
    properties: {
      description: 'MQTT over WebSocket (8083) and, with TLS, secure WebSocket (8084).'
      priority: 120
      direction: 'Inbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: mqttSourcePrefix
      sourcePortRange: '*'
      destinationAddressPrefix: '*'
      destinationPortRanges: enableTls ? [
        '8083'
        '8084'
      ] : [
        '8083'
      ]
    }
  }
] : []
var adminRules = [
  {
    name: 'deny-admin-from-internet'
    properties: {
      description: 'The admin listener (/metrics, /healthz; #14) is for the load balancer probe (source AzureLoadBalancer, allowed by the default rule) and the VNet, never the Internet.'
      priority: 200
      direction: 'Inbound'
      access: 'Deny'
      protocol: 'Tcp'
      sourceAddressPrefix: 'Internet'
      sourcePortRange: '*'
      destinationAddressPrefix: '*'
      destinationPortRange: string(adminPort)
    }
  }
]
var sshRules = empty(sshSourcePrefix) ? [] : [
  {
    name: 'allow-ssh-to-loadgens'
    properties: {
      description: 'SSH to the load generators, from the operator only.'
      priority: 100
      direction: 'Inbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: sshSourcePrefix
      sourcePortRange: '*'
      destinationAddressPrefix: '*'
      destinationPortRange: '22'
    }
  }
]

resource brokerNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${namePrefix}-broker-nsg'
  location: location
  properties: {
    securityRules: concat(mqttRules, tlsRules, wsRules, adminRules)
  }
}

resource loadgenNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${namePrefix}-loadgen-nsg'
  location: location
  properties: {
    securityRules: sshRules
  }
}

resource natIp 'Microsoft.Network/publicIPAddresses@2023-11-01' = if (enableNatGateway) {
  name: '${natName}-ip'
  location: location
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
  }
}

resource nat 'Microsoft.Network/natGateways@2023-11-01' = if (enableNatGateway) {
  name: natName
  location: location
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 4
    publicIpAddresses: [
      {
        id: natIp.id
      }
    ]
  }
}

var natRef = enableNatGateway ? {
  id: resourceId('Microsoft.Network/natGateways', natName)
} : null

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: '${namePrefix}-vnet'
  location: location
  dependsOn: [
    nat
  ]
  properties: {
    addressSpace: {
      addressPrefixes: [
        '10.40.0.0/16'
      ]
    }
    subnets: [
      {
        name: 'brokers'
        properties: {
          addressPrefix: '10.40.0.0/20'
          networkSecurityGroup: {
            id: brokerNsg.id
          }
          natGateway: natRef
        }
      }
      {
        name: 'loadgens'
        properties: {
          addressPrefix: '10.40.16.0/20'
          networkSecurityGroup: {
            id: loadgenNsg.id
          }
          natGateway: natRef
        }
      }
    ]
  }
}

output brokerSubnetId string = vnet.properties.subnets[0].id
output loadgenSubnetId string = vnet.properties.subnets[1].id
